"""The guest subnet's layout and rules (engine.netstack.config) and the DHCP range fields."""
from __future__ import annotations

import dataclasses
from ipaddress import IPv4Address, IPv4Network

import pytest

from engine.errors import ConfigError
from engine.netstack.config import (NetworkMode, UserNatConfig, default_dhcp_range, dhcp_range_problem, dns_address,
                                    gateway_address, subnet_problem)
from engine.netstack.dhcp import DhcpConfig
from tests.netstack.gateway_harness import Peers, dhcp_lease, make_config, running

NET = IPv4Network("10.0.2.0/24")
ip = IPv4Address


def test_the_layout_is_qemus() -> None:
    assert (gateway_address(NET), dns_address(NET)) == (ip("10.0.2.2"), ip("10.0.2.3"))
    assert default_dhcp_range(NET) == (ip("10.0.2.15"), ip("10.0.2.254"))
    cfg = DhcpConfig.for_subnet(NET)
    assert (cfg.gateway, cfg.dns, cfg.range_start, cfg.range_end) == (
        ip("10.0.2.2"), (ip("10.0.2.3"),), ip("10.0.2.15"), ip("10.0.2.254"))


@pytest.mark.parametrize(("subnet", "problem"), [
    ("10.0.2.0/24", None), ("192.168.7.0/27", None), ("172.16.0.0/12", None),
    ("10.0.2.0/28", "too small"), ("8.8.0.0/16", "not private"), ("127.0.0.0/24", "not private"),
    ("169.254.0.0/24", "not private"),
])
def test_subnet_rules(subnet: str, problem: str | None) -> None:
    assert subnet_problem(IPv4Network(subnet)) == problem


@pytest.mark.parametrize(("start", "end", "problem"), [
    ("10.0.2.15", "10.0.2.254", None),
    ("10.0.2.4", "10.0.2.4", None),
    ("10.0.2.100", "10.0.2.120", None),
    ("10.0.3.15", "10.0.2.254", "dhcp_start"),
    ("10.0.2.15", "10.0.2.255", "dhcp_end"),
    ("10.0.2.0", "10.0.2.20", "dhcp_start"),
    ("10.0.2.50", "10.0.2.40", "dhcp_end"),
    ("10.0.2.2", "10.0.2.20", "dhcp_start"),
    ("10.0.2.1", "10.0.2.20", "dhcp_start"),
    ("10.0.2.3", "10.0.2.3", "dhcp_start"),
])
def test_dhcp_range_rules(start: str, end: str, problem: str | None) -> None:
    found = dhcp_range_problem(NET, ip(start), ip(end))
    assert (found[0] if found else None) == problem


def test_the_dhcp_range_defaults_to_the_subnets_and_follows_it() -> None:
    assert UserNatConfig().dhcp_range == (ip("10.0.2.15"), ip("10.0.2.254"))
    moved = NetworkMode.user_nat().subnet("192.168.5.0/24").build()
    assert moved.dhcp_range == (ip("192.168.5.15"), ip("192.168.5.254"))
    half = NetworkMode.user_nat().dhcp_range(None, "10.0.2.20").build()
    assert (half.dhcp_start, half.dhcp_end, half.dhcp_range) == (None, ip("10.0.2.20"), (ip("10.0.2.15"), ip("10.0.2.20")))


def test_the_builder_takes_capsas_dhcp_fields_and_validates_them() -> None:
    built = NetworkMode.user_nat().dhcp_range("10.0.2.100", "10.0.2.110").build()
    assert (built.dhcp_start, built.dhcp_end) == (ip("10.0.2.100"), ip("10.0.2.110"))
    assert UserNatConfig(dhcp_start=ip("10.0.2.100"), dhcp_end=ip("10.0.2.110")).dhcp_range == built.dhcp_range
    with pytest.raises(ConfigError, match="dhcp_start: the range 10.0.2.2-10.0.2.9 holds the gateway's address"):
        NetworkMode.user_nat().dhcp_range("10.0.2.2", "10.0.2.9").build()
    with pytest.raises(ConfigError, match="dhcp_end: 10.1.0.9 is not a host address of the subnet 10.0.2.0/24"):
        UserNatConfig(dhcp_end=ip("10.1.0.9")).validate()
    with pytest.raises(ConfigError, match="dhcp_end: the range ends at 10.0.2.20, before its start 10.0.2.30"):
        NetworkMode.user_nat().dhcp_range("10.0.2.30", "10.0.2.20").build()
    with pytest.raises(ConfigError, match="dhcp_start 'ten' is not an IPv4 address"):
        NetworkMode.user_nat().dhcp_range("ten", None)


async def test_the_gateway_leases_from_the_configured_range(peers: Peers) -> None:
    config = dataclasses.replace(make_config(peers), dhcp_start=ip("10.0.2.100"), dhcp_end=ip("10.0.2.100"))
    async with running(config) as (gw, guest, _events):
        leased = await dhcp_lease(guest)
        assert leased == ip("10.0.2.100")
        assert gw.guest_ip == leased
