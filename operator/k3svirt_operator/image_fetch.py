"""Opening a VM author's image URL under the node's rules (the author is untrusted).

- ``file://``: only regular files under the node's image directories (hostpaths.file_url_problem).
- ``http(s)://``: the host is resolved once and the connection goes to an address that was checked,
  so DNS rebinding cannot swap it afterwards. Refused: loopback (unless the node allows it, e.g. for a
  local mirror), link-local (cloud metadata services live there), multicast, unspecified and reserved
  addresses. Private ranges are allowed (an edge box pulls images from its LAN). Redirects are
  re-checked the same way and may not leave http(s). No proxy from the environment is used.
- Sizes and time are capped by :class:`FetchPolicy` (config.Settings builds it); image_cache enforces
  them while it reads.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import os
import socket
import stat
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, Any

from . import hostpaths


class FetchRefused(ValueError):
    """The URL may not be fetched on this node; the message says which rule refused it."""


@dataclass(frozen=True)
class FetchPolicy:
    max_bytes: int = 64 << 30  # one image; the cache holds each URL once
    deadline_seconds: float = 3600.0  # a whole download, however slowly the server trickles
    connect_timeout: float = 30.0  # also the limit for one read
    allow_loopback: bool = False
    max_redirects: int = 5
    image_dirs: tuple[str, ...] = (hostpaths.DEFAULT_IMAGE_DIRS,)  # where file:// URLs may point
    reserve_bytes: int = 2 << 30  # K3SVIRT_STORAGE_RESERVE_BYTES: a download never eats into it


def address_problem(ip: str, policy: FetchPolicy) -> str | None:
    addr = ipaddress.ip_address(ip.split("%", 1)[0])
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped is not None:
        addr = addr.ipv4_mapped
    if addr.is_loopback:
        return None if policy.allow_loopback else "loopback (set K3SVIRT_IMAGE_ALLOW_LOOPBACK=true to allow)"
    for kind, hit in (("link-local", addr.is_link_local), ("multicast", addr.is_multicast),
                      ("unspecified", addr.is_unspecified), ("reserved", addr.is_reserved)):  # fmt: skip
        if hit:
            return kind
    return None


def _connect(host: str, port: int, timeout: float | None, policy: FetchPolicy) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise OSError(f"cannot resolve {host}: {e}") from e
    refused, last_error = [], None
    for family, kind, proto, _, sockaddr in infos:
        problem = address_problem(str(sockaddr[0]), policy)
        if problem:
            refused.append(f"{sockaddr[0]} ({problem})")
            continue
        sock = socket.socket(family, kind, proto)
        sock.settimeout(timeout)
        try:
            sock.connect(sockaddr)
            return sock
        except OSError as e:
            sock.close()
            last_error = e
    if last_error is not None:
        raise last_error
    raise FetchRefused(f"{host} resolves only to addresses image downloads may not use: {', '.join(refused)}")


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, policy: FetchPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def connect(self) -> None:
        self.sock = _connect(self.host, self.port, self.timeout, self.policy)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, policy: FetchPolicy, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.policy = policy

    def connect(self) -> None:
        sock = _connect(self.host, self.port, self.timeout, self.policy)
        self.sock = self._context.wrap_socket(sock, server_hostname=self.host)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.policy = policy

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPConnection, policy=self.policy), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.policy = policy

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(functools.partial(_HTTPSConnection, policy=self.policy), req,
                            context=self._context)  # fmt: skip


class _Redirects(urllib.request.HTTPRedirectHandler):
    def __init__(self, policy: FetchPolicy) -> None:
        super().__init__()
        self.max_redirections = policy.max_redirects

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        scheme = urllib.parse.urlsplit(newurl).scheme.lower()
        if scheme not in ("http", "https"):
            raise FetchRefused(f"{req.full_url} redirects to {newurl!r}: only http(s) redirects are followed")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _opener(policy: FetchPolicy) -> urllib.request.OpenerDirector:
    opener = urllib.request.OpenerDirector()  # not build_opener: no proxies, no file:, no ftp:
    for handler in (_HTTPHandler(policy), _HTTPSHandler(policy), _Redirects(policy),
                    urllib.request.HTTPDefaultErrorHandler(), urllib.request.HTTPErrorProcessor()):  # fmt: skip
        opener.add_handler(handler)
    return opener


def open_image(url: str, policy: FetchPolicy, user_agent: str) -> tuple[IO[bytes], int | None]:
    """An open stream of the image's bytes and its declared length (None when unknown).

    Raises FetchRefused for URLs the node's rules refuse, urllib/OS errors for unreachable ones.
    """
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise FetchRefused(f"{url!r} contains control characters")
    parts = urllib.parse.urlsplit(url)
    scheme = parts.scheme.lower()
    if scheme == "file":
        problem = hostpaths.file_url_problem(url, policy.image_dirs)
        if problem:
            raise FetchRefused(problem)
        real = os.path.realpath(urllib.parse.unquote(parts.path))
        f = open(real, "rb")  # noqa: SIM115 - the caller closes it
        st = os.fstat(f.fileno())
        if not stat.S_ISREG(st.st_mode):  # checked again on the open file (no swap after the check)
            f.close()
            raise FetchRefused(f"{url!r} is not a regular file")
        return f, st.st_size
    if scheme not in ("http", "https"):
        raise FetchRefused(f"{url!r}: only http://, https:// and file:// images are supported")
    req = urllib.request.Request(url, headers={"User-Agent": user_agent})
    resp = _opener(policy).open(req, timeout=policy.connect_timeout)
    length = resp.headers.get("Content-Length")
    return resp, int(length) if length and length.isdigit() else None
