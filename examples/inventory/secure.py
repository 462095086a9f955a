"""The inventory, secured: ``tether serve examples.inventory.secure:app --tls-cert ...``.

Every call needs an identity: a password login (``tether login``), an API
key, or a client certificate under mutual TLS. Reading needs the scope
``inventory.read``; adding and removing devices ``inventory.write``. Users
and API keys live in the auth store (``tether auth add-user``/``add-key``;
default ``auth.db`` in the state directory, ``TETHER_AUTH_STORE_PATH``).
"""

from __future__ import annotations

import tether
from examples.inventory.implementation import InventoryService
from tether.auth import AuthConfig, CertificateAuth

auth = AuthConfig(
    scopes={
        "inventory": ["inventory.read"],
        "inventory.add": ["inventory.write"],
        "inventory.remove": ["inventory.write"],
    },
    # Client certificates (signed by the CA given to --tls-client-ca) by subject.
    certificates=CertificateAuth({"robot.example.org": ["inventory.read"]}),
)

app = tether.App(InventoryService.from_csv(), title="Secure inventory", auth=auth)
