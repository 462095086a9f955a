"""The behaviour services in an App without metrics (``App(metrics=False)``)."""

from __future__ import annotations

import tether
from tests.apps.behaviour import BehaveImpl

app = tether.App(BehaveImpl(), title="Unmetered", metrics=False)
