"""The WSGI entry point: `gunicorn -c gunicorn.conf.py app:app`, `flask --app app token ...`."""

from wsapp import create_app

app = create_app()
