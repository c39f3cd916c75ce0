"""The console as an ASGI application: the routes of `pages` and `actions`, the stylesheet,
and the start and stop of the MQTT commander and the database pool."""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

from appliance.fleet.web import actions, pages
from appliance.fleet.web.app import HERE, Console, ConsoleConfig


def create_app(config: ConsoleConfig) -> Any:
    from starlette.applications import Starlette
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    console = Console(config)
    routes = [*pages.ROUTES, *actions.ROUTES,
              Mount("/static", app=StaticFiles(directory=os.path.join(HERE, "static")),
                    name="static")]

    @contextlib.asynccontextmanager
    async def lifespan(app: Any) -> AsyncIterator[None]:
        console.commander.start()
        try:
            yield
        finally:
            console.commander.close()
            console.pool.close()

    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.console = console
    return app
