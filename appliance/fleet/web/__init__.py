"""`wardtap fleet serve`: the fleet console in a browser.

- app: the console's state, sessions, CSRF, roles, health (every page goes through
  `handler`); server: the ASGI application (routes, start and stop).
- pages: read-only pages and exports; actions: log-in, commands, rollout, accounts.
- plot: the timeline as server-drawn SVG; filters: formatting for the templates.
- templates/, static/: Jinja2 templates (autoescaped) and one stylesheet; no JavaScript.

Imports: appliance.fleet (db, queries, accounts, rollout); starlette, jinja2 and uvicorn are
imported only here.
"""
