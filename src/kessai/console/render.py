"""Server-rendered pages: one Jinja environment with autoescaping, and the headers every page has.

Autoescaping is on for every template, so any text from the database (a merchant's name, a
voucher number) is shown as text. The Content-Security-Policy allows scripts and styles from our
own origin only — no inline script, no inline style — so that even a missed escape could not run
anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from importlib.resources import files
from typing import Any, Final

from jinja2 import ChoiceLoader, Environment, FileSystemLoader, StrictUndefined
from litestar import Response
from litestar.datastructures import Cookie
from litestar.enums import MediaType

from kessai.console import formats
from kessai.console.i18n import Translator
from kessai.domain.catalog import load_catalog

CONTENT_SECURITY_POLICY: Final = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS: Final[Mapping[str, str]] = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Pages hold payment data and one-time secrets (a reset password): never keep them in caches.
    "Cache-Control": "no-store",
}


def _environment() -> Environment:
    package = files("kessai")
    loader = ChoiceLoader(
        [
            FileSystemLoader(str(package / "console" / "templates")),
            # The sandbox wallet page lives beside the API's templates, where its URL was born.
            FileSystemLoader(str(package / "api" / "templates")),
        ]
    )
    env = Environment(
        loader=loader,
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["yen"] = formats.yen
    env.filters["jst"] = formats.jst
    env.filters["jst_minutes"] = lambda moment: formats.jst(moment, seconds=False)
    return env


ENV: Final = _environment()


def service_name(service_id: str, lang: str) -> str:
    """A service's name in the page's language (Japanese names where the service has one)."""
    service = load_catalog().get(service_id)
    if service is None:
        return service_id
    return service.name if lang == "ja" else service.name_en


def html(
    template: str,
    lang: str,
    *,
    status_code: int = 200,
    cookies: Iterable[Cookie] = (),
    **context: Any,
) -> Response[str]:
    """Render ``template`` in ``lang`` as an HTML response with the security headers."""
    t = Translator(lang)
    body = ENV.get_template(template).render(
        lang=lang,
        t=t,
        service_name=lambda service_id: service_name(service_id, lang),
        **context,
    )
    return Response(
        body,
        status_code=status_code,
        media_type=MediaType.HTML,
        headers=dict(SECURITY_HEADERS),
        cookies=list(cookies),
    )
