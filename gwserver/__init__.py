"""gwserver: an API gateway on gunicorn's prefork master and gevent workers."""

__version__ = "0.1.0"
