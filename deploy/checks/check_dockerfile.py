#!/usr/bin/env python3
"""What hadolint does not check in deploy/Dockerfile, and FalconPay needs:

    check_dockerfile.py deploy/Dockerfile

  * multi-stage: the binary is built in one stage and only copied
    (COPY --from=...) into the final one, which has no compiler;
  * the final stage's last USER is a non-root numeric UID (10001), so
    Kubernetes' runAsNonRoot can verify it without a passwd lookup;
  * the final stage writes nothing at run time that a read-only root
    filesystem would break: no VOLUME, no entrypoint script, an exec-form
    ENTRYPOINT of the binary itself;
  * the build uses the lock file (cargo build --locked).

Prints one line per problem; exits 1 if there is any.
"""

import re
import sys


def instructions(text):
    """(INSTRUCTION, arguments) pairs, continuation lines joined."""
    out, current = [], ""
    for line in text.splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # comment inside a continued instruction
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def main(path):
    problems = []
    with open(path) as f:
        ins = instructions(f.read())
    stages, stage = [], None
    for word, args in ins:
        if word == "FROM":
            stage = {"from": args, "ins": []}
            stages.append(stage)
        elif stage is not None:
            stage["ins"].append((word, args))
    if len(stages) < 2:
        problems.append(f"{len(stages)} stage(s): expected a build stage and a runtime stage")
    else:
        build_names = {re.split(r"\s+AS\s+", s["from"], flags=re.I)[-1].lower()
                       for s in stages[:-1] if re.search(r"\s+AS\s+", s["from"], re.I)}
        final = stages[-1]
        if not any(w == "RUN" and "cargo build" in a and "--locked" in a
                   for s in stages[:-1] for w, a in s["ins"]):
            problems.append("no build stage runs `cargo build --locked`")
        if any(w == "RUN" and re.search(r"\b(cargo|rustc|rustup)\b", a) for w, a in final["ins"]):
            problems.append("the final stage runs the Rust toolchain")
        if "rust:" in final["from"]:
            problems.append(f"the final stage is based on {final['from']!r}, a toolchain image")
        copies = [a for w, a in final["ins"] if w == "COPY" and "--from=" in a]
        if not any(re.search(r"--from=(\S+)", a).group(1).lower() in build_names for a in copies):
            problems.append("the final stage copies nothing from a build stage")
        users = [a for w, a in final["ins"] if w == "USER"]
        if not users:
            problems.append("the final stage sets no USER (it would run as root)")
        else:
            uid = users[-1].split(":")[0]
            if not uid.isdigit() or int(uid) == 0:
                problems.append(f"last USER is {users[-1]!r}: expected a numeric non-root UID")
        if any(w == "VOLUME" for w, _ in final["ins"]):
            problems.append("the final stage declares a VOLUME")
        entry = [a for w, a in final["ins"] if w == "ENTRYPOINT"]
        if not entry or not entry[-1].startswith("["):
            problems.append("ENTRYPOINT is missing or not in exec form")
        elif "falcon" not in entry[-1] or ".sh" in entry[-1]:
            problems.append(f"ENTRYPOINT {entry[-1]} is not the falcon binary")
    for word, args in ins:
        if word == "ADD" and re.search(r"https?://", args):
            problems.append(f"ADD of a URL ({args}): fetch in a RUN with a checksum instead")
    for p in problems:
        print(f"  {p}")
    if problems:
        sys.exit(1)
    print(f"{len(stages)} stages")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(sys.argv[1])
