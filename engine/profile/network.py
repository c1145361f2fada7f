"""The ``network:`` section of a profile: none, or user-mode NAT with forwards, hosts and a policy.

    network: none                  # no network card (the default)
    network: user_nat              # user-mode NAT with every default below
    network:
      mode: user_nat               # required in the mapping form: none or user_nat (or a cluster)
      cluster: backend             # join cluster network "backend" (implies user_nat): VMs of
                                   # every profile naming it reach each other by address and
                                   # host name; all members must use the same subnet
      subnet: 10.0.2.0/24          # private, /27 or larger; gateway .2, DNS .3, guest from .15
      dhcp_start: 10.0.2.15        # the guest's addresses come from this range (default:
      dhcp_end: 10.0.2.254         # .15 up to the last host); not the gateway's or DNS's
      mtu: 1500                    # 576 to 65520
      dns_upstream: [1.1.1.1, 127.0.0.1:5353]   # default: the host's resolvers
      hosts:                       # static DNS entries the gateway serves
        api.example.test: 127.0.0.1
      forwards:                    # host port -> guest port
        - {protocol: tcp, host_port: 8080, guest_port: 80, host_addr: 127.0.0.1}
        - udp 0:53                 # short form "PROTO [HOST_ADDR:]HOST_PORT:GUEST_PORT"
      policy:                      # NetworkPolicy.from_dict's shape
        default: deny
        rules:
          - {action: allow, domain: "*.github.com"}

:func:`parse_network` turns it into the engine's own config (:class:`NoNetwork` or a built
:class:`UserNatConfig`), recording every mistake as an issue at the line of the offending node,
policy mistakes included (a :class:`PolicyError` path is walked back through the YAML nodes).
"""
from __future__ import annotations

import difflib
from ipaddress import AddressValueError, IPv4Address, IPv4Network, NetmaskValueError
from typing import Any

from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.errors import ConfigError
from engine.netstack.config import (CLUSTER_NAME_RE, NetworkConfig, NetworkMode, NoNetwork, PortForward, UserNatBuilder, UserNatConfig,
                                    default_dhcp_range, dhcp_range_problem, subnet_problem)
from engine.netstack.domains import PolicyError, format_path, normalize_domain
from engine.netstack.policy.policy import NetworkPolicy, Rule
from engine.profile.schema import Fields, ProfileIssue, describe

NETWORK_KEYS = ("mode", "cluster", "subnet", "dhcp_start", "dhcp_end", "mtu", "dns_upstream", "hosts", "forwards", "policy")
FORWARD_KEYS = ("protocol", "host_port", "guest_port", "host_addr")
MODES = ("none", "user_nat")
# What people call user-mode NAT elsewhere (QEMU's "-netdev user", "slirp"): hinted, not accepted.
MODE_ALIASES = ("nat", "user", "usernat", "user-nat", "user-mode", "slirp", "usermode")
MTU = (576, 65520)
FORWARD_FORM = (
    "a mapping with protocol, host_port and guest_port, "
    "or 'PROTO [HOST_ADDR:]HOST_PORT:GUEST_PORT' such as 'tcp 8080:80'"
)


def parse_network(f: Fields, document: CommentedMap, pool_max_size: int = 1) -> NetworkConfig:
    """``network:`` of a profile document; NoNetwork when absent (or when anything is wrong).

    ``pool_max_size``: a fixed host port can belong to one VM only, so a pool that may hold more
    than one VM must forward from host port 0 (any free port, reported by each VM).
    """
    if "network" not in document:
        return NoNetwork()
    value = document["network"]
    if isinstance(value, str) and value in MODES:
        return NoNetwork() if value == "none" else NetworkMode.user_nat().build()
    if not isinstance(value, CommentedMap):
        _bad_mode(f, document, "network", "", "'none', 'user_nat' or a mapping with mode")
        return NoNetwork()
    before = len(f.issues)
    f.unknown_keys(value, "network", NETWORK_KEYS)
    mode = None
    if "cluster" in value and "mode" not in value:
        mode = "user_nat"  # a cluster is user-mode NAT with a membership
    elif f.require(value, "mode", "network", "'none' or 'user_nat'"):
        if isinstance(value["mode"], str) and value["mode"] in MODES:
            mode = str(value["mode"])
        else:
            _bad_mode(f, value, "mode", "network", "'none' or 'user_nat'")
    if mode == "none":
        for key in NETWORK_KEYS[1:]:
            if key in value:
                why = f"expected no {key} with mode none (no network card), or mode user_nat"
                f.error(value, key, f"network.{key}", why)
        return NoNetwork()
    # user_nat, or a missing or wrong mode: check the rest anyway, so every issue comes out at once
    builder = NetworkMode.user_nat()
    builder.cluster(f.matching(value, "cluster", "network", CLUSTER_NAME_RE,
                               "a cluster name (1-63 letters, digits, '.', '_' or '-')"))
    subnet = _subnet(f, value)
    if subnet is not None:
        builder.subnet(str(subnet))
    dhcp_start, dhcp_end = _dhcp_range(f, value, subnet)
    builder.dhcp_range(dhcp_start, dhcp_end)
    builder.mtu(f.integer(value, "mtu", "network", *MTU, default=1500))
    upstream = _dns_upstream(f, value)
    if upstream:
        builder.dns_upstream(*upstream)
    for name, address in _hosts(f, value):
        builder.host(name, address)
    for fwd in _forwards(f, value, pool_max_size):
        forward = builder.forward_tcp if fwd.protocol == "tcp" else builder.forward_udp
        forward(fwd.host_port, fwd.guest_port, fwd.host_addr)
    policy = _policy(f, value)
    if policy is not None:
        builder.policy(policy)
    if len(f.issues) > before or mode is None:
        return NoNetwork()
    return _build(f, document, builder)


def _build(f: Fields, document: CommentedMap, builder: UserNatBuilder) -> NetworkConfig:
    try:
        return builder.build()
    except ConfigError as err:  # the checks above mirror UserNatConfig.validate; a backstop
        f.error(document, "network", "network", str(err))
        return NoNetwork()


def _bad_mode(f: Fields, holder: CommentedMap, key: str, parent: str, what: str) -> None:
    value = holder[key]
    hint = ""
    if isinstance(value, str):
        text = value.strip().lower()
        close = difflib.get_close_matches(text, MODES, n=1)
        if text in MODE_ALIASES or text in MODES:
            hint = " (did you mean 'user_nat'?)" if text != "none" else " (did you mean 'none'?)"
        elif close:
            hint = f" (did you mean {close[0]!r}?)"
    f.error(holder, key, f.path(parent, key), f"expected {what}, found {describe(value)}{hint}")


# -- subnet, DNS, hosts ---------------------------------------------------------------------------


def _subnet(f: Fields, network: CommentedMap) -> IPv4Network | None:
    """A private IPv4 network, /27 or larger (the guest's address is .15)."""
    if "subnet" not in network:
        return None
    value = network["subnet"]
    what = "a private IPv4 network in CIDR form, /27 or larger, such as 10.0.2.0/24"
    if not isinstance(value, str) or "/" not in value:
        f.expected(network, "subnet", "network", what)
        return None
    try:
        subnet = IPv4Network(value.strip())
    except (AddressValueError, NetmaskValueError, ValueError):
        try:
            wide = IPv4Network(value.strip(), strict=False)
        except ValueError:
            f.expected(network, "subnet", "network", what)
            return None
        why = f"expected {what}, found {describe(value)} (host bits set; did you mean {wide}?)"
        f.error(network, "subnet", "network.subnet", why)
        return None
    problem = subnet_problem(subnet)  # the rules live with the engine's config
    if problem == "too small":
        why = f"expected a /27 or larger network (the guest's address is .15), found {describe(value)}"
        f.error(network, "subnet", "network.subnet", why)
        return None
    if problem == "not private":
        why = f"expected a private network (in 10/8, 172.16/12 or 192.168/16), found {describe(value)}"
        f.error(network, "subnet", "network.subnet", why)
        return None
    return subnet


def _dhcp_range(f: Fields, network: CommentedMap, subnet: IPv4Network | None) -> tuple[str | None, str | None]:
    """``dhcp_start``/``dhcp_end``: addresses of the subnet (a missing end: the default's)."""
    found: dict[str, IPv4Address] = {}
    for key in ("dhcp_start", "dhcp_end"):
        if key not in network:
            continue
        value = network[key]
        if isinstance(value, str) and _is_address(value):
            found[key] = IPv4Address(value.strip())
        else:
            f.expected(network, key, "network", "an IPv4 address of the subnet such as 10.0.2.15")
    if not found or ("subnet" in network and subnet is None):
        return None, None  # nothing set, or the subnet is wrong already (reported)
    net = subnet if subnet is not None else UserNatConfig().subnet
    first, last = default_dhcp_range(net)
    problem = dhcp_range_problem(net, found.get("dhcp_start", first), found.get("dhcp_end", last))
    if problem is not None:
        key, why = problem
        # A default end is not in the file: name the end the file set.
        key = key if key in found else next(iter(found))
        why = f"expected a range of the subnet's host addresses without the gateway's and DNS's ({why})"
        f.error(network, key, f"network.{key}", why)
        return None, None
    start, end = found.get("dhcp_start"), found.get("dhcp_end")
    return (str(start) if start is not None else None), (str(end) if end is not None else None)


def _dns_upstream(f: Fields, network: CommentedMap) -> list[str]:
    """``dns_upstream``: one ``ip[:port]`` string or a list of them."""
    if "dns_upstream" not in network:
        return []
    value = network["dns_upstream"]
    what = "a resolver address such as 1.1.1.1 or 127.0.0.1:5353"
    if isinstance(value, str):
        holder: CommentedMap | CommentedSeq = network
        items: list[tuple[Any, str]] = [("dns_upstream", "network.dns_upstream")]
    elif isinstance(value, CommentedSeq) and len(value):
        holder = value
        items = [(i, f"network.dns_upstream[{i}]") for i in range(len(value))]
    elif isinstance(value, CommentedSeq):
        why = "expected at least one resolver (leave dns_upstream out for the host's), found an empty list"
        f.error(network, "dns_upstream", "network.dns_upstream", why)
        return []
    else:
        f.expected(network, "dns_upstream", "network", f"{what}, or a list of them (leave it out for the host's resolvers)")
        return []
    servers = []
    for key, field in items:
        server = holder[key]
        host, _, port = server.partition(":") if isinstance(server, str) else ("", "", "")
        if not _is_address(host) or (port and not (port.isdigit() and 1 <= int(port) <= 65535)):
            f.error(holder, key, field, f"expected {what}, found {describe(server)}")
        else:
            servers.append(f"{host.strip()}:{port}" if port else host.strip())
    return servers


def _hosts(f: Fields, network: CommentedMap) -> list[tuple[str, str]]:
    """``hosts: {name: ipv4}``: static DNS entries, each name once (case and a final dot ignored)."""
    hosts = f.mapping(network, "hosts", "network")
    if hosts is None:
        return []
    found: dict[str, object] = {}
    entries = []
    for name, address in hosts.items():
        field = f"network.hosts.{name}"
        try:
            canonical = normalize_domain(name, ())
        except PolicyError as err:
            why = err.detail.removeprefix(f"{name!r}: ")
            f.error(hosts, name, field, f"expected a host name such as api.example.test, found {describe(name)} ({why})")
            continue
        if canonical in found:
            f.error(hosts, name, field, f"expected each host once, found {canonical!r} again (also {found[canonical]!r})")
            continue
        found[canonical] = name
        if not isinstance(address, str) or not _is_address(address):
            f.error(hosts, name, field, f"expected an IPv4 address such as 127.0.0.1, found {describe(address)}")
            continue
        entries.append((canonical, address.strip()))
    return entries


def _is_address(text: str) -> bool:
    try:
        IPv4Address(text.strip())
    except (AddressValueError, ValueError):
        return False
    return True


# -- forwards ------------------------------------------------------------------------------------


def _forwards(f: Fields, network: CommentedMap, pool_max_size: int) -> list[PortForward]:
    """``forwards``: a list of mappings or ``"tcp [ADDR:]HOST:GUEST"`` strings; no host port twice."""
    if "forwards" not in network:
        return []
    items = network["forwards"]
    if not isinstance(items, CommentedSeq):
        f.expected(network, "forwards", "network", f"a list of forwards, each {FORWARD_FORM}")
        return []
    forwards: list[tuple[PortForward, int]] = []
    for i, item in enumerate(items):
        where = f"network.forwards[{i}]"
        if isinstance(item, str):
            fwd = _short_forward(f, items, i, where)
            port_holder: tuple[CommentedMap | CommentedSeq, object, str] = (items, i, where)
        elif isinstance(item, CommentedMap):
            fwd = _long_forward(f, item, where)
            port_holder = (item, "host_port", f"{where}.host_port")
        else:
            f.error(items, i, where, f"expected {FORWARD_FORM}, found {describe(item)}")
            continue
        if fwd is None:
            continue
        holder, key, field = port_holder
        if fwd.host_port and pool_max_size > 1:
            f.error(holder, key, field, f"expected host port 0 (any free port) in a pool of up to {pool_max_size} VMs, "
                    f"found {fwd.host_port}: a host port can belong to one VM only (or set pool.max_size: 1)")
            continue
        clash = next((j for other, j in forwards if _clash(fwd, other)), None)
        if clash is not None:
            f.error(holder, key, field, f"expected a host port not forwarded already, found {fwd.protocol} "
                    f"{fwd.host_addr}:{fwd.host_port} (also forwarded by forwards[{clash}], line {Fields.line_of(items, clash)})")
            continue
        forwards.append((fwd, i))
    return [fwd for fwd, _ in forwards]


def _clash(a: PortForward, b: PortForward) -> bool:
    """Whether two forwards would listen on the same host socket (0.0.0.0 overlaps every address)."""
    same_addr = a.host_addr == b.host_addr or "0.0.0.0" in (a.host_addr, b.host_addr)
    return a.protocol == b.protocol and a.host_port != 0 and a.host_port == b.host_port and same_addr


def _short_forward(f: Fields, items: CommentedSeq, i: int, where: str) -> PortForward | None:
    """``tcp 8080:80`` or ``udp 0.0.0.0:5353:53``."""
    text = str(items[i])
    words = text.split()
    parts = words[1].split(":") if len(words) == 2 else []
    if len(words) != 2 or words[0].lower() not in ("tcp", "udp") or len(parts) not in (2, 3):
        f.error(items, i, where, f"expected {FORWARD_FORM}, found {describe(items[i])}")
        return None
    address = parts[0] if len(parts) == 3 else "127.0.0.1"
    host, guest = parts[-2:]
    problems = []
    if not _is_address(address):
        problems.append(f"host address {address!r} is no IPv4 address")
    if not (host.isdigit() and 0 <= int(host) <= 65535):
        problems.append(f"host port {host!r} is not 0 (any free port) to 65535")
    if not (guest.isdigit() and 1 <= int(guest) <= 65535):
        problems.append(f"guest port {guest!r} is not 1 to 65535")
    if problems:
        f.error(items, i, where, f"expected {FORWARD_FORM}, found {describe(items[i])} ({'; '.join(problems)})")
        return None
    return PortForward(words[0].lower(), int(host), int(guest), address)  # type: ignore[arg-type]  # checked: tcp or udp


def _long_forward(f: Fields, item: CommentedMap, where: str) -> PortForward | None:
    before = len(f.issues)
    f.unknown_keys(item, where, FORWARD_KEYS)
    protocol = None
    if f.require(item, "protocol", where, "tcp or udp"):
        value = item["protocol"]
        if isinstance(value, str) and value.strip().lower() in ("tcp", "udp"):
            protocol = value.strip().lower()
        else:
            f.expected(item, "protocol", where, "tcp or udp")
    host_port = guest_port = 0
    if f.require(item, "host_port", where, "the host port, 0 for any free port"):
        host_port = f.integer(item, "host_port", where, 0, 65535, default=0)
    if f.require(item, "guest_port", where, "the guest's port"):
        guest_port = f.integer(item, "guest_port", where, 1, 65535, default=0)
    address = "127.0.0.1"
    if "host_addr" in item:
        value = item["host_addr"]
        if isinstance(value, str) and _is_address(value):
            address = value.strip()
        else:
            f.expected(item, "host_addr", where, "an IPv4 address such as 127.0.0.1 (all interfaces: 0.0.0.0)")
    if len(f.issues) > before or protocol is None:
        return None
    return PortForward(protocol, host_port, guest_port, address)  # type: ignore[arg-type]  # checked: tcp or udp


# -- policy --------------------------------------------------------------------------------------


def _policy(f: Fields, network: CommentedMap) -> NetworkPolicy | None:
    """``policy: {default, rules}``; every bad rule is reported, each at its own line."""
    node = f.mapping(network, "policy", "network")
    if node is None:
        return None
    try:
        return NetworkPolicy.from_dict(node)
    except PolicyError as err:
        errors = [err]
    # from_dict stops at the first mistake: ask again rule by rule, and for the rest alone.
    rules = node.get("rules")
    if isinstance(rules, CommentedSeq):
        for i, rule in enumerate(rules):
            try:
                Rule.from_dict(rule, ("rules", i))
            except PolicyError as err:
                errors.append(err)
    for key, value in node.items():
        if key != "rules":
            try:
                NetworkPolicy.from_dict({key: value})
            except PolicyError as err:
                errors.append(err)
    seen: set[tuple[tuple[str | int, ...], str]] = set()
    for issue in errors:
        if (issue.path, issue.detail) in seen:
            continue
        seen.add((issue.path, issue.detail))
        where = format_path(issue.path)
        field = f"network.policy.{where}" if where else "network.policy"
        f.issues.append(ProfileIssue(f.file, policy_line(network, issue.path), field, issue.detail))
    return None


def policy_line(network: CommentedMap, path: tuple[str | int, ...]) -> int:
    """The line of the node at ``path`` (a PolicyError's) under ``network.policy``, or of the
    deepest node of it that exists."""
    node: Any = network["policy"]
    line = Fields.line_of(network, "policy")
    for part in path:
        if isinstance(node, CommentedMap):
            key = next((k for k in node if k == part or str(k) == str(part)), None)
            if key is None:
                break
            line, node = Fields.line_of(node, key), node[key]
        elif isinstance(node, CommentedSeq) and isinstance(part, int) and 0 <= part < len(node):
            line, node = Fields.line_of(node, part), node[part]
        else:
            break
    return line


# -- a summary for listings ----------------------------------------------------------------------


def network_summary(config: NetworkConfig) -> dict[str, object]:
    """A JSON-able summary: the mode and, for user-mode NAT, its settings and the policy's size."""
    if not isinstance(config, UserNatConfig):
        return {"mode": "none"}
    return {
        "mode": "user_nat",
        "subnet": str(config.subnet),
        **({"cluster": config.cluster} if config.cluster is not None else {}),
        "mtu": config.mtu,
        "dns_upstream": None if config.dns_upstream is None else [f"{host}:{port}" for host, port in config.dns_upstream],
        "hosts": {name: str(address) for name, address in config.hosts},
        "forwards": [
            {"protocol": fwd.protocol, "host_addr": fwd.host_addr, "host_port": fwd.host_port, "guest_port": fwd.guest_port}
            for fwd in config.forwards
        ],
        "policy": {"default": config.policy.default.value, "rules": len(config.policy.rules)},
    }
