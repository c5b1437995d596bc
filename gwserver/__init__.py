"""gwserver: an API gateway on gunicorn's prefork master and gevent workers."""

__version__ = "0.1.0"

from . import compiled as _compiled      # noqa: E402  (before any compiled module is imported)

_compiled.decide()
