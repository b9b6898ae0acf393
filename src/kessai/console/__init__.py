"""The merchant console: server-rendered pages under /console for a merchant's own staff.

``kessai.console.mount.console_routes(settings)`` gives the routers the application mounts: the
pages (behind login, CSRF and role checks) and their static files. The wallet simulator of the
sandbox (``kessai.api.sandbox_pages``) shares this package's templates, words and stylesheet.
This ``__init__`` imports nothing, so the command line can use the user functions without
loading the web framework.
"""
