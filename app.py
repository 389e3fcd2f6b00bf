"""The WSGI entry point: `gunicorn -c gunicorn.conf.py app:app`, `flask --app app token ...`.

A bad setting stops here with one line per problem on stderr and exit status 2 (not a
traceback), whichever command imported this module first.
"""

from wsapp import create_app
from wsapp.settings import exit_on_error

app = create_app(exit_on_error())
