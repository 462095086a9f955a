"""The client side: Client, AsyncClient and their connections and proxies."""
