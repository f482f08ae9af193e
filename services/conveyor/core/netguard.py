"""Outgoing-request guard: only http(s) to public addresses, unless an allow-list says otherwise.

Webhooks and callbacks POST to URLs that clients choose. Without this guard a client could make
the platform reach its own Redis, the cluster's internal services or the cloud metadata
endpoint (SSRF). Names are resolved and every address checked; the connection then goes to a
checked address (with the original Host and TLS server name), so a DNS answer that changes
between the check and the connection (rebinding) cannot slip through.
"""

import ipaddress
import socket
from collections.abc import Sequence
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

ALLOWED_SCHEMES = frozenset({"http", "https"})


class UnsafeUrlError(ValueError):
    """A URL the platform refuses to reach."""


@dataclass(frozen=True)
class NetGuard:
    """The policy: public addresses, plus `allowed_networks`."""

    allowed_networks: Sequence[IPNetwork] = ()

    def check_address(self, address: IPAddress, host: str) -> None:
        """Raise UnsafeUrlError unless `address` is public or allow-listed."""
        if any(address in network for network in self.allowed_networks):
            return
        embedded = _embedded_ipv4(address)
        if embedded is not None:
            # ::ffff:a.b.c.d, ::a.b.c.d, 6to4 and NAT64 reach the IPv4 address inside.
            self.check_address(embedded, host)
            return
        if not address.is_global or address.is_multicast:
            raise UnsafeUrlError(
                f"{host} resolves to {address}, a non-public address "
                "(loopback, private, link-local or reserved); it is not reached"
            )

    def check_scheme(self, scheme: str) -> None:
        """Only http and https."""
        if scheme.lower() not in ALLOWED_SCHEMES:
            raise UnsafeUrlError(f"scheme {scheme!r} is not allowed; use http or https")

    def check_literal(self, scheme: str, host: str) -> None:
        """The checks that need no DNS: the scheme, and the host if it is an IP address."""
        self.check_scheme(scheme)
        address = _literal(host)
        if address is not None:
            self.check_address(address, host)

    def resolve(self, host: str, port: int) -> list[IPAddress]:
        """Every address `host` resolves to, each checked; raises UnsafeUrlError if any is
        refused (a name with one private address among public ones is refused outright).
        """
        literal = _literal(host)
        if literal is not None:
            addresses = [literal]
        else:
            try:
                infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            except socket.gaierror as exc:
                raise OSError(f"cannot resolve {host}: {exc.strerror}") from exc
            addresses = list(
                dict.fromkeys(
                    ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos
                )
            )
        for address in addresses:
            self.check_address(address, host)
        return addresses


_NAT64 = (ipaddress.IPv6Network("64:ff9b::/96"), ipaddress.IPv6Network("64:ff9b:1::/48"))
_COMPATIBLE = ipaddress.IPv6Network("::/96")


def _embedded_ipv4(address: IPAddress) -> ipaddress.IPv4Address | None:
    """The IPv4 address an IPv6 address carries (mapped, compatible, 6to4, NAT64), if any."""
    if not isinstance(address, ipaddress.IPv6Address):
        return None
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address in _COMPATIBLE or any(address in network for network in _NAT64):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def _literal(host: str) -> IPAddress | None:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
