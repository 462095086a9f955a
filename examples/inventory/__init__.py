"""A network device inventory served with Tether."""
