#!/usr/bin/env python3
"""Check deploy/ offline: render and validate every kustomization, and check the flags the
manifests pass to Palisade's binaries.

1. Renders deploy/base, every deploy/overlays/* and every deploy/components/* (each applied to
   the base) with `kubectl kustomize`, and validates each rendering against the Kubernetes
   schemas of the oldest and newest minor versions supported (`kubernetes-validate --strict`).
   A kind without a schema is an error unless its API group is in ALLOWED_WITHOUT_SCHEMA
   (custom resources, which kubernetes-validate cannot check).
2. Unless --no-flags: every `--flag` in the args and command of Palisade's containers must be
   listed by that binary's `--help`, and every `$(VAR)` in them must be an env variable the
   container defines (Kubernetes leaves unknown references as they are).
3. With --palisadectl-bin: mints certificates with `palisadectl certs` into a temporary
   directory, runs deploy/certs-to-secrets.sh on them (both ways) and validates the output.

Exit status: 0 all good; 1 a check failed; 2 bad usage or a missing tool.

    python3 deploy/check.py --controller-bin target/release/palisade-controller \\
        --agent-bin target/release/palisade-agent [--palisadectl-bin target/release/palisadectl]
    python3 deploy/check.py --no-flags
"""

import argparse
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tempfile

try:
    import yaml
except ImportError:  # kubernetes-validate depends on PyYAML
    yaml = None

DEPLOY = os.path.dirname(os.path.abspath(__file__))
# Oldest and newest Kubernetes minor versions supported (k8s-openapi 0.29's range).
VERSIONS = ["1.33", "1.37"]
# API groups whose kinds kubernetes-validate has no schema for, and may pass unchecked.
ALLOWED_WITHOUT_SCHEMA = {"cert-manager.io"}
# Container name -> which binary runs in it.
CONTAINERS = {"controller": "palisade-controller", "agent": "palisade-agent"}
POD_TEMPLATE_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}
SETUP_HINT = "run scripts/setup.sh (it installs kubernetes-validate and checks for kubectl)"


class Failures:
    def __init__(self):
        self.messages = []

    def add(self, where, message):
        self.messages.append(f"{where}: {message}")


def die(message, status=2):
    print(f"check.py: {message}", file=sys.stderr)
    sys.exit(status)


def run(cmd, **kwargs):
    return subprocess.run(cmd, capture_output=True, text=True, **kwargs)


def tools():
    """kubectl (with kustomize) and the kubernetes-validate command, or exit saying what is missing."""
    if shutil.which("kubectl") is None:
        die(f"kubectl not found: {SETUP_HINT}")
    if run(["kubectl", "kustomize", "--help"]).returncode != 0:
        die(f"`kubectl kustomize` does not work with this kubectl: {SETUP_HINT}")
    if importlib.util.find_spec("kubernetes_validate") is not None:
        validate = [sys.executable, "-m", "kubernetes_validate"]
    elif shutil.which("kubernetes-validate"):
        validate = ["kubernetes-validate"]
    else:
        die(f"kubernetes-validate not found: {SETUP_HINT}")
    if yaml is None:
        die(f"PyYAML not importable by {sys.executable}: {SETUP_HINT}")
    return validate


def targets(tmp):
    """(name, directory) of every kustomization to render."""
    out = [("base", os.path.join(DEPLOY, "base"))]
    for group in ("overlays", "components"):
        root = os.path.join(DEPLOY, group)
        if not os.path.isdir(root):
            continue
        for name in sorted(os.listdir(root)):
            path = os.path.join(root, name)
            if not os.path.isfile(os.path.join(path, "kustomization.yaml")):
                continue
            if group == "overlays":
                out.append((f"overlays/{name}", path))
            else:
                # A component renders only as part of a kustomization: the base with it.
                wrapper = os.path.join(tmp, f"component-{name}")
                os.makedirs(wrapper)
                with open(os.path.join(wrapper, "kustomization.yaml"), "w") as f:
                    f.write(
                        "apiVersion: kustomize.config.k8s.io/v1beta1\n"
                        "kind: Kustomization\n"
                        f"resources:\n  - {os.path.relpath(os.path.join(DEPLOY, 'base'), wrapper)}\n"
                        f"components:\n  - {os.path.relpath(path, wrapper)}\n"
                    )
                out.append((f"base + components/{name}", wrapper))
    return out


def render(name, directory, tmp, failures):
    """Render one kustomization to a file (kubernetes-validate cannot read stdin twice)."""
    result = run(["kubectl", "kustomize", directory])
    if result.returncode != 0:
        failures.add(name, f"kubectl kustomize {directory} failed:\n{result.stderr.strip()}")
        return None
    path = os.path.join(tmp, re.sub(r"[^A-Za-z0-9]+", "-", name) + ".yaml")
    with open(path, "w") as f:
        f.write(result.stdout)
    return path


WARN_SCHEMA = re.compile(r"Couldn't find schema for kind (\S+) with api version (\S+)")


def validate(name, path, validate_cmd, failures):
    """kubernetes-validate --strict against every supported version: errors, and warnings
    other than custom resources of the allowed groups, fail."""
    cmd = validate_cmd + ["--strict"]
    for v in VERSIONS:
        cmd += ["-k", v]
    result = run(cmd + [path])
    ok = result.returncode == 0
    for line in (result.stdout + result.stderr).splitlines():
        if line.startswith("INFO"):
            continue
        if line.startswith("WARN"):
            m = WARN_SCHEMA.search(line)
            group = m.group(2).split("/")[0] if m and "/" in m.group(2) else ""
            if group in ALLOWED_WITHOUT_SCHEMA:
                continue
            failures.add(name, f"not validated (not allowed to pass unchecked): {line}")
            ok = False
        elif line.strip():
            failures.add(name, line)
            ok = False
    if result.returncode != 0 and ok:
        failures.add(name, f"kubernetes-validate exited with {result.returncode}")
    return ok and result.returncode == 0


def documents(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if isinstance(d, dict)]


OPTION_LINE = re.compile(r"^\s*(?:-[A-Za-z0-9],\s*)?(--[A-Za-z0-9][A-Za-z0-9-]*)")
POSSIBLE = re.compile(r"\[possible values: ([^\]]*)\]")


def help_flags(binary, failures):
    """The long flags `binary --help` lists: {flag: its possible values, or None for any}."""
    try:
        result = run([binary, "--help"], timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        failures.add(binary, f"cannot run it: {e}")
        return None
    if result.returncode != 0:
        failures.add(binary, f"--help failed ({result.returncode}): {result.stderr.strip()}")
        return None
    flags = {}
    current = None
    for line in result.stdout.splitlines():
        m = OPTION_LINE.match(line)
        if m:
            current = m.group(1)
            flags[current] = None
        if current:
            v = POSSIBLE.search(line)
            if v:
                flags[current] = {x.strip() for x in v.group(1).split(",")}
    if not flags:
        failures.add(binary, "its --help lists no --flags")
        return None
    return flags


def check_flags(name, path, binaries, failures):
    ok = True
    seen = 0
    for doc in documents(path):
        kind = doc.get("kind")
        if kind not in POD_TEMPLATE_KINDS and kind != "Pod":
            continue
        spec = doc.get("spec", {}) if kind == "Pod" else doc.get("spec", {}).get("template", {}).get("spec", {})
        obj = f"{kind}/{doc.get('metadata', {}).get('name')}"
        for c in spec.get("initContainers", []) + spec.get("containers", []):
            cname = c.get("name")
            where = f"{name}: {obj} container {cname}"
            image = str(c.get("image", ""))
            binary_name = CONTAINERS.get(cname)
            if binary_name is None:
                if re.search(r"(^|/)palisade-", image):
                    failures.add(where, f"runs {image} but check.py does not know which binary (CONTAINERS)")
                    ok = False
                continue
            seen += 1
            flags = binaries.get(binary_name)
            tokens = [str(t) for t in (c.get("command") or []) + (c.get("args") or [])]
            env = {e.get("name") for e in c.get("env", [])}
            for i, t in enumerate(tokens):
                for var in re.findall(r"(?<!\$)\$\(([A-Za-z_][A-Za-z0-9_]*)\)", t):
                    if var not in env:
                        failures.add(where, f"'{t}' refers to $({var}), which the container's env does not define")
                        ok = False
                if flags is None or not t.startswith("--"):
                    continue
                flag, eq, value = t.partition("=")
                if flag not in flags:
                    failures.add(where, f"{flag} is not a flag of {binary_name} (not in its --help)")
                    ok = False
                    continue
                if not eq and i + 1 < len(tokens) and not tokens[i + 1].startswith("-"):
                    value = tokens[i + 1]
                allowed = flags[flag]
                if allowed is not None and value and value not in allowed:
                    failures.add(where, f"{flag} {value}: {binary_name} takes one of {', '.join(sorted(allowed))}")
                    ok = False
    if seen == 0:
        failures.add(name, "no Palisade container found to check")
        ok = False
    return ok


def check_secrets_script(palisadectl, tmp, validate_cmd, failures):
    certs = os.path.join(tmp, "certs")
    hosts = [f"palisade-controller-{i}.palisade-controller-peers" for i in range(3)]
    cmd = [palisadectl, "certs", "--dir", certs, "--node", "node-1", "--node", "node-2"]
    for r in (1, 2, 3):
        cmd += ["--replica", str(r)]
    for h in hosts + ["palisade-controller", "localhost", "127.0.0.1"]:
        cmd += ["--host", h]
    result = run(cmd)
    if result.returncode != 0:
        failures.add("palisadectl certs", result.stderr.strip())
        return False
    ok = True
    script = os.path.join(DEPLOY, "certs-to-secrets.sh")
    for mode in ([], ["--cert-manager"]):
        name = "certs-to-secrets.sh " + " ".join(mode + ["DIR"])
        result = run(["bash", script] + mode + [certs])
        if result.returncode != 0:
            failures.add(name, f"failed: {result.stderr.strip()}")
            ok = False
            continue
        path = os.path.join(tmp, "secrets" + "".join(mode) + ".yaml")
        with open(path, "w") as f:
            f.write(result.stdout)
        ok &= validate(name, path, validate_cmd, failures)
        secrets = {d["metadata"]["name"]: d for d in documents(path) if d.get("kind") == "Secret"}
        want = {"palisade-agent-certs"} | ({"palisade-ca"} if mode else {f"palisade-replica-{n}" for n in (1, 2, 3)})
        if set(secrets) != want:
            failures.add(name, f"made Secrets {sorted(secrets)}, expected {sorted(want)}")
            ok = False
        agent = secrets.get("palisade-agent-certs", {}).get("data", {})
        for key in ("ca.crt", "node-node-1.pem", "node-node-1-key.pem", "node-node-2.pem", "node-node-2-key.pem"):
            if key not in agent:
                failures.add(name, f"palisade-agent-certs has no {key}")
                ok = False
    return ok


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--controller-bin", help="palisade-controller binary (for its --help)")
    parser.add_argument("--agent-bin", help="palisade-agent binary (for its --help)")
    parser.add_argument("--palisadectl-bin", help="palisadectl binary: also check deploy/certs-to-secrets.sh")
    parser.add_argument("--no-flags", action="store_true", help="only render and validate")
    args = parser.parse_args()
    if not args.no_flags and not (args.controller_bin and args.agent_bin):
        parser.error("give --controller-bin and --agent-bin, or --no-flags")

    validate_cmd = tools()
    failures = Failures()
    binaries = {}
    if not args.no_flags:
        binaries = {
            "palisade-controller": help_flags(args.controller_bin, failures),
            "palisade-agent": help_flags(args.agent_bin, failures),
        }

    with tempfile.TemporaryDirectory(prefix="palisade-deploy-check-") as tmp:
        for name, directory in targets(tmp):
            path = render(name, directory, tmp, failures)
            if path is None:
                continue
            valid = validate(name, path, validate_cmd, failures)
            flags_ok = True
            if not args.no_flags:
                flags_ok = check_flags(name, path, binaries, failures)
            status = "ok" if valid and flags_ok else "FAILED"
            print(f"{name}: {status} (Kubernetes {', '.join(VERSIONS)} strict{'' if args.no_flags else ', flags'})")
        if args.palisadectl_bin:
            ok = check_secrets_script(args.palisadectl_bin, tmp, validate_cmd, failures)
            print(f"certs-to-secrets.sh: {'ok' if ok else 'FAILED'}")

    if failures.messages:
        print(f"\n{len(failures.messages)} problem(s) in deploy/:", file=sys.stderr)
        for m in failures.messages:
            print(f"  {m}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
