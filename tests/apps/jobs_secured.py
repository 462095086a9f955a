"""A jobs App with auth, for the jobs scope tests (``tether serve tests.apps.jobs_secured:app``).

Its credential store is ``TETHER_AUTH_STORE_PATH`` (the tests fill it with API
keys first), its job store ``TETHER_JOB_STORE_URL``. Every jobs action needs
the scope of its name (``jobs.submit``, ``jobs.read``, ``jobs.cancel``,
``jobs.work``); the ``secret`` job type needs ``secret.submit`` as well.
``defaults`` is the same App with no jobs scopes configured (the defaults apply),
``work_open`` one whose ``jobs.work`` needs only an identity.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import tether
from tether.auth import AuthConfig

#: The scope each action needs, by action name.
ACTION_SCOPES = {name: [name] for name in ("jobs.submit", "jobs.read", "jobs.cancel", "jobs.work")}


def echo(parameters: dict[str, Any]) -> dict[str, Any]:
    """Return the parameters."""
    return dict(parameters)


def make_app(scopes: Mapping[str, Iterable[str]] = ACTION_SCOPES) -> tether.App:
    """The App: job types ``echo`` (open to any submitter) and ``secret`` (scoped);
    ``scopes``: its ``AuthConfig.scopes``."""
    app = tether.App(title="Secured jobs", auth=AuthConfig(audience="jobs", scopes=scopes))
    schema = {"type": "object"}
    app.register_job_type("echo", parameters_schema=schema, result_schema=schema, handler=echo)
    app.register_job_type(
        "secret",
        parameters_schema=schema,
        result_schema=schema,
        handler=echo,
        max_attempts=1,
        scopes=["secret.submit"],
    )
    return app


app = make_app()
defaults = make_app({})
work_open = make_app({"jobs.work": []})
