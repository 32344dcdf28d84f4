#!/usr/bin/env python3
"""The man pages and the drivers cannot drift apart.

For every docs/man/*.scd page with "; drift-test" lines:
  - forward: every option a driver of the page reads is documented. `netblk` runs the
    page's commands ("; drift-test run: ARGS", names on 127.0.0.1:1 where nothing
    listens) with NETBLK_LIST_OPTIONS=1, which makes spec::Options print each key a driver
    asks for (its getters are called for every option the driver knows, present or not);
  - backward: every documented option is accepted: added to one of the page's
    --image-opts bases ("; drift-test base: KEYS") or to `create -o`
    ("; drift-test create-base: ARGS"), it is not refused as unknown ("does not support
    the option", "is unexpected", "Invalid parameter").
Documented options are the bold names that begin the term lines (lines starting with '*')
of the page's OPTIONS section (or "; drift-test section: NAME") and CREATE OPTIONS.
Other lines: "drivers: NAMES" (the drivers the page documents; "-" for the generic
options), "alias: DRIVER=PREFIX" (keys a nested reader reports under its own name, such as
the NBD server address, belong to PREFIX), "internal: KEYS" (keys a driver reads that users
may not give), "cli: yes" (the page of the command: every verb of `netblk --help` has a
"## VERB" section and every flag of `netblk [VERB] --help` is in the page, in bold). {dir} is a temporary directory with disk.raw and disk.qcow2; {new} a name
there for an image to create, different for every command.

Usage: option_drift.py NETBLK MAN_DIR [PAGE.scd ...]
"""
import concurrent.futures
import os
import re
import subprocess
import sys
import tempfile
import itertools

COUNTER = itertools.count()
UNKNOWN = re.compile(r"does(n't| not) support the option|is unexpected|Invalid parameter '")


def page_spec(path):
    spec = {"cli": False, "text": open(path, encoding="utf-8").read(), "drivers": set(), "aliases": {}, "internal": set(), "runs": [], "bases": [],
            "create_bases": [], "section": "OPTIONS"}
    sections = {}
    current = None
    for line in open(path, encoding="utf-8"):
        line = line.rstrip("\n")
        m = re.match(r"; drift-test ([a-z-]+): (.*)$", line)
        if m:
            what, value = m.groups()
            if what == "drivers":
                spec["drivers"].update(value.split())
            elif what == "alias":
                name, prefix = value.split("=", 1)
                spec["aliases"][name] = prefix
            elif what == "internal":
                spec["internal"].update(value.split())
            elif what == "run":
                spec["runs"].append(value)
            elif what == "base":
                spec["bases"].append(value)
            elif what == "create-base":
                spec["create_bases"].append(value)
            elif what == "section":
                spec["section"] = value
            elif what == "cli":
                spec["cli"] = True
            else:
                raise SystemExit(f"{path}: unknown drift-test line: {line}")
            continue
        if line.startswith("# "):
            current = line[2:].strip()
            sections.setdefault(current, set())
            continue
        if current and line.startswith("*"):
            for name in re.findall(r"\*([A-Za-z0-9_.\\-]+)\*", line):
                name = name.replace("\\", "").rstrip(".")
                if name:
                    sections[current].add(normalise(name))
    spec["open_doc"] = sections.get(spec["section"], set())
    spec["create_doc"] = sections.get("CREATE OPTIONS", set())
    return spec


def normalise(key):
    return ".".join("N" if part.isdigit() else part for part in key.split("."))


def run(netblk, args, tmp):
    new = os.path.join(tmp, f"new-{next(COUNTER)}")
    args = [a.replace("{dir}", tmp).replace("{new}", new) for a in args]
    env = dict(os.environ, NETBLK_LIST_OPTIONS="1", NETBLK_LOG="error")
    try:
        p = subprocess.run([netblk] + args, env=env, capture_output=True, text=True, timeout=60, cwd=tmp)
    except subprocess.TimeoutExpired as e:
        raise SystemExit(f"netblk {' '.join(args)}: no answer in 60 s") from e
    reports, messages = [], []
    for line in p.stderr.splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[0] == "netblk-option":
            reports.append(tuple(parts[1:]))
        elif line.strip():
            messages.append(line)
    return reports, "\n".join(messages)


def asked(spec, reports):
    """Keys of the page's drivers in `reports`: (kind, key) with kind 'open' or 'create'."""
    out = set()
    for kind, driver, key in reports:
        if driver in spec["drivers"]:
            name = key
        elif driver in spec["aliases"]:
            name = spec["aliases"][driver] + key
        else:
            continue
        out.add(("create" if kind == "create" else "open", normalise(name)))
    return out


def documented(key, doc):
    # A group ("server", "host-key-check") is documented by its keys.
    return key in doc or any(d.startswith(key + ".") for d in doc)


def with_option(base, key):
    """`base` (k=v,k=v) with key=1, replacing the key when the base has it."""
    value = "1"
    key = key.replace(".N.", ".0.").removesuffix(".N")
    items = [i for i in base.split(",") if i and i.split("=", 1)[0] != key]
    return ",".join(items + [f"{key}={value}"])


def help_flags(netblk, args):
    """The flags `netblk ARGS --help` lists (CLI11: "  -f,--format TEXT  ...")."""
    text = subprocess.run([netblk] + args + ["--help"], capture_output=True, text=True).stdout
    flags = set()
    in_options = False
    for line in text.splitlines():
        if line.rstrip().endswith(":") and not line.startswith(" "):
            in_options = line.startswith("Options")
            continue
        m = re.match(r"  (-[^ ]+)", line) if in_options else None
        if m:
            flags.update(f for f in m.group(1).split(",") if f.startswith("-"))
    return text, flags


def check_cli(netblk, spec, name):
    """Every verb of `netblk --help` has a section, and every flag it lists is in the page."""
    errors = []
    text, flags = help_flags(netblk, [])
    verbs = []
    in_verbs = False
    for line in text.splitlines():
        if not line.startswith(" "):
            in_verbs = line.startswith("Subcommands")
        elif in_verbs and line.strip():
            verbs.append(line.split()[0])
    page = spec["text"]
    for verb in verbs:
        if f"## {verb}\n" not in page:
            errors.append(f"{name}: verb '{verb}' has no '## {verb}' section")
        _, verb_flags = help_flags(netblk, [verb])
        flags |= verb_flags
    for flag in sorted(flags):
        if not re.search(r"\*" + re.escape(flag) + r"(\*|=)", page):
            errors.append(f"{name}: flag '{flag}' (netblk --help) is not in the page")
    return errors


def check_page(netblk, path, tmp):
    spec = page_spec(path)
    name = os.path.basename(path)
    errors = check_cli(netblk, spec, name) if spec["cli"] else []
    if not spec["drivers"]:
        return errors
    seen = set()
    # Every command at once: most of them wait for a connection to be refused (libcurl
    # retries for about 3 s), not for the CPU.
    jobs = [("run", None, args.split()) for args in spec["runs"]]
    jobs += [("open", key, ["info", "--image-opts", with_option(base, key)])
             for key in sorted(spec["open_doc"] - spec["internal"]) for base in spec["bases"]]
    jobs += [("create", key, ["create", "-o", with_option("", key)] + args.split())
             for key in sorted(spec["create_doc"]) for args in spec["create_bases"]]
    with concurrent.futures.ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(lambda job: run(netblk, job[2], tmp), jobs))
    accepted, refusals = set(), {}
    for (what, key, _), (reports, msg) in zip(jobs, results):
        seen |= asked(spec, reports)
        if what == "run":
            continue
        if UNKNOWN.search(msg):
            refusals.setdefault((what, key), msg.splitlines()[-1])
        else:
            accepted.add((what, key))
    if spec["runs"] and not seen:
        errors.append(f"{name}: its commands report no option of {' '.join(sorted(spec['drivers']))} "
                      f"(is NETBLK_LIST_OPTIONS working?)")
    # Backward: each documented option is accepted with one of the bases.
    for (what, key), message in sorted(refusals.items()):
        if (what, key) not in accepted:
            kind = "create option" if what == "create" else "option"
            errors.append(f"{name}: documented {kind} '{key}' is refused: {message}")

    # Forward: every option read is documented.
    for kind, key in sorted(seen):
        if key in spec["internal"]:
            continue
        doc = spec["create_doc"] if kind == "create" else spec["open_doc"]
        section = "CREATE OPTIONS" if kind == "create" else spec["section"]
        if not documented(key, doc):
            errors.append(f"{name}: option '{key}' is read by {'/'.join(sorted(spec['drivers']))} "
                          f"but not documented in {section}")
    print(f"{name}: {len(seen)} options read, {len(spec['open_doc']) + len(spec['create_doc'])} documented"
          + ("" if not errors else f", {len(errors)} problem(s)"))
    return errors


def main():
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    netblk = os.path.abspath(sys.argv[1])
    pages = sys.argv[3:] or sorted(os.path.join(sys.argv[2], f) for f in os.listdir(sys.argv[2])
                                   if f.endswith(".scd"))
    with tempfile.TemporaryDirectory(prefix="netblk-drift-") as tmp:
        with open(os.path.join(tmp, "disk.raw"), "wb") as f:
            f.truncate(1 << 20)
        subprocess.run([netblk, "create", "-q", "-f", "qcow2", "-b", "disk.raw", "-F", "raw",
                        os.path.join(tmp, "disk.qcow2")], check=True, cwd=tmp)
        errors = []
        for page in pages:
            errors += check_page(netblk, page, tmp)
    for e in errors:
        print("FAIL " + e)
    sys.exit(1 if errors else 0)


if __name__ == "__main__":
    main()
