"""Every route the extension registers refuses a request without a token (403), for every method it answers."""

from __future__ import annotations

import re

import pytest
from tornado.httpclient import HTTPClientError
from tornado.routing import PathMatches, Router, Rule
from tornado.web import RequestHandler

from fedjax_room.jupyter.server.handlers import ROUTES

METHODS = ("GET", "POST", "PUT", "PATCH", "DELETE")


def _rules(router: Router):
    for rule in getattr(router, "rules", []):
        if isinstance(rule.target, Router):
            yield from _rules(rule.target)
        else:
            yield rule


def registered_routes(web_app) -> list[tuple[str, type]]:
    """(concrete path, handler class) for every rule on the server whose pattern is under /fedjax-room/."""
    found = []
    for rule in list(_rules(web_app.default_router)) + list(_rules(web_app.wildcard_router)):
        assert isinstance(rule, Rule)
        matcher = rule.matcher
        if not isinstance(matcher, PathMatches) or "/fedjax-room/" not in matcher.regex.pattern:
            continue
        path = re.sub(r"\(\?P<\w+>[^)]*\)", "room-1", matcher.regex.pattern).rstrip("$")
        assert matcher.regex.fullmatch(path), f"cannot build a path for {matcher.regex.pattern}"
        found.append((path, rule.target))
    return found


def answered_methods(handler: type) -> list[str]:
    return [m for m in METHODS if getattr(handler, m.lower()) is not getattr(RequestHandler, m.lower())]


def test_every_declared_route_is_registered(jp_serverapp):
    routes = registered_routes(jp_serverapp.web_app)
    assert {h for _, h in routes} == {h for _, h in ROUTES}
    assert len(routes) == len(ROUTES) >= 9


@pytest.mark.parametrize("header", [None, "token not-the-token"], ids=["no-token", "wrong-token"])
async def test_every_route_needs_a_token(jp_serverapp, http_server_client, jp_base_url, header):
    routes = registered_routes(jp_serverapp.web_app)
    checked = []
    for path, handler in routes:
        for method in answered_methods(handler):
            headers = {"Authorization": header} if header else {}
            body = "{}" if method in ("POST", "PUT", "PATCH") else None
            with pytest.raises(HTTPClientError) as info:
                await http_server_client.fetch(path, method=method, headers=headers, body=body)
            assert info.value.code == 403, f"{method} {path} answered {info.value.code} without a valid token"
            checked.append((method, path))
    assert len(checked) >= 12  # GET/POST/DELETE across the nine routes


async def test_the_same_routes_answer_with_the_token(jp_fetch, jp_serverapp):
    response = await jp_fetch("fedjax-room", "status")
    assert response.code == 200
    with pytest.raises(HTTPClientError) as info:  # authenticated, but no such room
        await jp_fetch("fedjax-room", "rooms", "room-1", "sites")
    assert info.value.code == 404
