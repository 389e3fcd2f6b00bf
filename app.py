"""The shipped service, the shortest user of wsapp's public API.

`gunicorn -c gunicorn.conf.py app:app`, `flask --app app token alice`. It serves /ws/chat
(built in), /ws/echo (below), the HTTP API, health, metrics and the demo page (the site
blueprint). A bad WSAPP_* setting stops here with one line per problem on stderr and exit
status 2, whichever command imported this module first.
"""

from pathlib import Path

from flask import Flask

from wsapp import Connection, WSApp, site
from wsapp.settings import exit_on_bad_settings

app = Flask(__name__)
with exit_on_bad_settings():
    site.configure_logging(app)
    ws = WSApp(app)
site.init_service(app, ws)
app.register_blueprint(site.blueprint(ws, static_folder=Path(__file__).parent / "static"))


@ws.route("/ws/echo")
def echo(conn: Connection) -> None:
    for message in conn:
        conn.send(message)
