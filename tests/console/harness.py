"""A license server with its console on ephemeral loopback ports, and a cookie-keeping HTTP client."""
from __future__ import annotations

import json

import treq
from twisted.internet import defer

from tests.harness import Daemon, with_timeout


class ConsoleDaemon(Daemon):
    def service_options(self) -> dict:
        return {**super().service_options(), "console_listen": "tcp:0:interface=127.0.0.1"}

    @defer.inlineCallbacks
    def start(self):
        yield super().start()
        yield self.service.console_listener.listening
        self.url = self.service.console.base_url

    @defer.inlineCallbacks
    def link(self, role="admin"):
        """What tsls-admin console asks for: a one-time link, over the protocol, as the administrator."""
        admin = yield self.admin()
        answer = yield admin.request("console_link", role=role)
        return answer["url"]


class Http:
    """Just enough of a browser: keeps the session cookie, sends the CSRF token on changes."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.cookies: dict[str, str] = {}
        self.csrf = ""

    @defer.inlineCallbacks
    def get(self, path: str):
        response = yield with_timeout(treq.get(self._url(path), cookies=self.cookies, allow_redirects=False,
                                               persistent=False))
        body = yield with_timeout(treq.content(response))
        for cookie in response.headers.getRawHeaders(b"set-cookie", []):
            name, _, rest = cookie.decode().partition("=")
            self.cookies[name] = rest.split(";", 1)[0]
        return response, body

    @defer.inlineCallbacks
    def get_json(self, path: str, expect: int = 200):
        response, body = yield self.get(path)
        assert response.code == expect, (response.code, body)
        return json.loads(body)

    @defer.inlineCallbacks
    def post(self, path: str, payload: dict, csrf: str | None = None, headers: dict | None = None):
        sent = {"content-type": ["application/json"], "x-tsls-csrf": [self.csrf if csrf is None else csrf]}
        sent.update(headers or {})
        response = yield with_timeout(treq.post(self._url(path), json.dumps(payload).encode(), headers=sent,
                                                cookies=self.cookies, persistent=False))
        body = yield with_timeout(treq.content(response))
        return response.code, json.loads(body)

    @defer.inlineCallbacks
    def login(self, url: str):
        response, body = yield self.get(url)
        assert response.code == 200, body
        session = yield self.get_json("/api/session")
        self.csrf = session["csrf"]
        return session

    def _url(self, path: str) -> str:
        return path if path.startswith("http") else self.base + path
