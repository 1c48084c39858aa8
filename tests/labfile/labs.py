"""Lab files for the tests, written as calls rather than pasted TOML: ``lab(name, server(), host(), ...)``
gives the text of a lab file, one ``[[table]]`` a call, in the order given (line numbers in error
messages follow that order)."""
from __future__ import annotations


def _value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def table(kind: str, **fields) -> str:
    """One ``[[kind]]`` table (``[kind]`` when kind is "lab")."""
    head = "[lab]" if kind == "lab" else f"[[{kind}]]"
    return "\n".join([head, *(f"{k} = {_value(v)}" for k, v in fields.items())]) + "\n"


def lab(name: str, *tables: str, start: str = "2025-01-06", **fields) -> str:
    return "\n".join([table("lab", name=name, start=start, **fields), *tables])


def server(name: str = "LS1", **fields) -> str:
    return table("license_server", name=name, **fields)


def host(name: str = "TS01", license_servers=("LS1",), **fields) -> str:
    return table("session_host", name=name, **fields) if license_servers is None else \
        table("session_host", name=name, license_servers=list(license_servers), **fields)


def fleet(name: str = "desks", devices: int = 3, **fields) -> str:
    return table("fleet", name=name, devices=devices, **fields)


def purchase(name: str = "cals", license_server: str = "LS1", **fields) -> str:
    return table("purchase", name=name, license_server=license_server, **fields)


def step(at: str, do: str, **fields) -> str:
    return table("step", at=at, do=do, **fields)


def install(at: str = "0d", name: str = "cals") -> str:
    return step(at, "install", purchase=name)


def wave(at: str = "+1h", fleet: str = "desks", through=("TS01",), **fields) -> str:
    return step(at, "wave", fleet=fleet, through=list(through), **fields)
