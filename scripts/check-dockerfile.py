#!/usr/bin/env python3
"""Static checks of the Dockerfile, for machines without a Docker engine (issue #4).

    scripts/check-dockerfile.py [--dockerfile PATH]
        Checks the Dockerfile and its .dockerignore; prints one line per check; exits 1 if
        any fails.
    scripts/check-dockerfile.py --stage-build-context DIR [--dockerfile PATH]
        Copies what the build stage COPYs from the build context (honouring .dockerignore)
        under DIR, as the image would see it, and prints the directory its cargo build runs
        in (DIR + WORKDIR). scripts/check-packaging builds there.
    scripts/check-dockerfile.py --self-test
        Runs the checks on broken variants of the Dockerfile and expects each to fail.

Python 3 standard library only. Heredocs (RUN <<EOF) are not understood and are refused.
"""

import argparse
import json
import os
import re
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

BINARY = "/usr/local/bin/bayeux-mqtt-bridge"
CONFIG = "/etc/bayeux-mqtt-bridge/bridge.toml"
STATE_DIR = "/var/lib/bayeux-mqtt-bridge"
# The variable that turns the HTTP listener on (it overrides `[http] listen`).
LISTEN_ENV = "BAYEUX_MQTT_BRIDGE__HTTP__LISTEN"
LOOPBACK = ("127.0.0.1", "[::1]", "localhost")
BUILD_COMMAND = ["cargo", "build", "--release", "--locked"]
# Paths the build context must not carry (huge, or secrets).
MUST_IGNORE = ["target", ".git", "tests/peers/node_modules"]
DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
FULL_VERSION = re.compile(r"(^|[^0-9.])\d+\.\d+\.\d+")


class DockerfileError(Exception):
    """The Dockerfile cannot be parsed by this checker."""


@dataclass
class Instruction:
    line: int
    keyword: str
    args: str


@dataclass
class Stage:
    index: int
    line: int
    image: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def label(self) -> str:
        return self.name or str(self.index)

    def last(self, keyword: str) -> Instruction | None:
        found = [i for i in self.instructions if i.keyword == keyword]
        return found[-1] if found else None


# ----------------------------------------------------------------------------------------------
# Parsing


def logical_lines(text: str) -> list[tuple[int, str]]:
    """Joins continued lines and drops comments, as the Docker builder does."""
    escape = "\\"
    directive = re.match(r"(?:#\s*\w+\s*=.*\n)*#\s*escape\s*=\s*(\S)", text)
    if directive:
        escape = directive.group(1)
    lines: list[tuple[int, str]] = []
    current, start = "", 0
    for number, raw in enumerate(text.splitlines(), start=1):
        stripped = raw.strip()
        if not current and not stripped:
            continue
        if stripped.startswith("#"):
            continue  # comments, also inside a continued instruction
        if not current:
            start = number
        if stripped.endswith(escape):
            current += raw.rstrip()[:-1] + " "
            continue
        current += raw
        lines.append((start, current.strip()))
        current = ""
    if current.strip():
        lines.append((start, current.strip()))
    return lines


def substitute(value: str, args: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = match.group(1) or match.group(3)
        default = match.group(2)
        if name in args and args[name] != "":
            return args[name]
        if default is not None:
            return default
        raise DockerfileError(f"${name} has no value here, so the image cannot be checked")

    return re.sub(r"\$\{(\w+)(?::-([^}]*))?\}|\$(\w+)", replace, value)


def parse(text: str) -> tuple[list[Stage], list[str]]:
    """Returns the stages, and problems found while parsing."""
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    problems: list[str] = []
    for line, logical in logical_lines(text):
        keyword, _, rest = logical.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if re.search(r"<<-?\s*['\"]?\w+", rest) and keyword in ("RUN", "COPY", "ADD"):
            raise DockerfileError(f"line {line}: heredocs are not supported by this checker")
        if keyword == "FROM":
            tokens = [t for t in rest.split() if not t.startswith("--")]
            if not tokens:
                raise DockerfileError(f"line {line}: FROM without an image")
            image = substitute(tokens[0], global_args)
            name = None
            if len(tokens) >= 3 and tokens[1].upper() == "AS":
                name = tokens[2].lower()
            stages.append(Stage(len(stages), line, image, name))
        elif not stages:
            if keyword == "ARG":
                for spec in shlex.split(rest):
                    key, _, value = spec.partition("=")
                    global_args[key] = value
            else:
                problems.append(f"line {line}: {keyword} before the first FROM")
        else:
            stages[-1].instructions.append(Instruction(line, keyword, rest))
    return stages, problems


def exec_form(args: str) -> list[str] | None:
    """The JSON array of an exec-form instruction, or None for shell form."""
    if not args.startswith("["):
        return None
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and value and all(isinstance(v, str) for v in value):
        return value
    return None


def split_flags(args: str) -> tuple[list[str], str]:
    """Separates leading `--flag[=value]` options from the rest of an instruction."""
    flags = []
    rest = args
    while rest.startswith("--"):
        flag, _, rest = rest.partition(" ")
        flags.append(flag)
        rest = rest.lstrip()
    return flags, rest


def image_parts(image: str) -> tuple[str, str | None, str | None]:
    """name, tag and digest of an image reference (a registry port is not a tag)."""
    name, _, digest = image.partition("@")
    tag = None
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        name, tag = name[:colon], name[colon + 1 :]
    return name, tag, digest or None


# ----------------------------------------------------------------------------------------------
# .dockerignore


def ignore_rules(text: str) -> list[tuple[bool, re.Pattern]]:
    rules = []
    for raw in text.splitlines():
        pattern = raw.strip()
        if not pattern or pattern.startswith("#"):
            continue
        negate = pattern.startswith("!")
        pattern = os.path.normpath(pattern.lstrip("!").strip().lstrip("/"))
        rules.append((negate, re.compile("^" + glob_regex(pattern) + "$")))
    return rules


def glob_regex(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return out


def is_ignored(path: str, rules: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether Docker leaves `path` (relative to the context) out: it or a parent matches the
    last matching rule, and that rule is not an exception (`!`)."""
    parts = path.strip("/").split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for negate, regex in rules:
        if any(regex.match(c) for c in candidates):
            ignored = not negate
    return ignored


# ----------------------------------------------------------------------------------------------
# Checks


@dataclass
class Result:
    ok: bool
    name: str
    detail: str


def check(text: str, rules: list[tuple[bool, re.Pattern]] | None) -> list[Result]:
    results: list[Result] = []

    def report(ok: bool, name: str, detail: str) -> None:
        results.append(Result(ok, name, detail))

    try:
        stages, problems = parse(text)
    except DockerfileError as e:
        return [Result(False, "parse", str(e))]
    for problem in problems:
        report(False, "parse", problem)
    if not stages:
        return results + [Result(False, "multi-stage", "no FROM at all")]

    names = {s.name for s in stages if s.name}
    report(
        len(stages) >= 2,
        "multi-stage",
        f"{len(stages)} stages ({', '.join(s.label() for s in stages)})",
    )

    for stage in stages:
        name, tag, digest = image_parts(stage.image)
        if name.lower() in names or name == "scratch":
            report(True, "pinned", f"stage {stage.label()}: FROM {stage.image} (no image to pin)")
        elif digest is not None:
            good = bool(DIGEST.match(digest))
            report(good, "pinned", f"stage {stage.label()}: {stage.image}"
                   + (" (by digest)" if good else " (malformed digest)"))
        elif tag is None or tag == "latest":
            report(False, "pinned", f"stage {stage.label()}: {stage.image} floats (latest)")
        elif FULL_VERSION.search(tag):
            report(True, "pinned", f"stage {stage.label()}: {stage.image} (exact version tag)")
        else:
            report(False, "pinned",
                   f"stage {stage.label()}: {stage.image}: tag {tag!r} floats; pin a digest "
                   "or an x.y.z version")

    final = stages[-1]
    where = f"final stage {final.label()}"

    user = final.last("USER")
    if user is None:
        report(False, "non-root user", f"{where} has no USER")
    else:
        who = user.args.split(":")[0].strip()
        report(who not in ("", "root", "0") and "$" not in who, "non-root user",
               f"{where}: USER {user.args}")

    stop = final.last("STOPSIGNAL")
    signal = stop.args.strip().upper() if stop else ""
    report(signal in ("SIGTERM", "TERM", "15"), "STOPSIGNAL SIGTERM",
           f"{where}: STOPSIGNAL {stop.args}" if stop else f"{where} has no STOPSIGNAL")

    health = final.last("HEALTHCHECK")
    if health is None:
        report(False, "HEALTHCHECK", f"{where} has no HEALTHCHECK")
    else:
        flags, rest = split_flags(health.args)
        keyword, _, command = rest.partition(" ")
        argv = exec_form(command.strip()) if keyword.upper() == "CMD" else None
        if keyword.upper() == "NONE":
            report(False, "HEALTHCHECK", "HEALTHCHECK NONE disables the check")
        elif argv is None:
            report(False, "HEALTHCHECK", f"not in exec form (needs a shell): {rest}")
        elif argv[0] != BINARY or argv[1:2] != ["health"]:
            report(False, "HEALTHCHECK", f"does not run `{BINARY} health`: {argv}")
        else:
            report(True, "HEALTHCHECK", f"exec form, {' '.join(argv)} {' '.join(flags)}".strip())

    entrypoint = final.last("ENTRYPOINT")
    argv = exec_form(entrypoint.args) if entrypoint else None
    if entrypoint is None:
        report(False, "ENTRYPOINT", f"{where} has no ENTRYPOINT")
    elif argv is None:
        report(False, "ENTRYPOINT", f"shell form ({entrypoint.args}): the daemon would not be "
               "PID 1 and would miss SIGTERM")
    else:
        report(argv[0] == BINARY, "ENTRYPOINT", f"exec form {argv}")

    cmd = final.last("CMD")
    if cmd is not None:
        argv = exec_form(cmd.args)
        if argv is None:
            report(False, "CMD", f"shell form ({cmd.args}) would pass `/bin/sh -c` to the "
                   "ENTRYPOINT")
        else:
            pairs = list(zip(argv, argv[1:]))
            report(("--config", CONFIG) in pairs, "CMD", f"exec form {argv}")
    else:
        report(False, "CMD", f"{where} has no CMD naming --config {CONFIG}")

    check_listener(final, health, report)
    check_state_dir(final, stages, report)

    build = binary_source(final, stages)
    if build is None:
        report(False, "binary from build stage",
               f"{where} does not COPY --from=<stage> the binary to {BINARY}")
    else:
        report(True, "binary from build stage", f"COPY --from={build.label()} … {BINARY}")
        commands = [build_commands(i) for i in build.instructions if i.keyword == "RUN"]
        found = any(BUILD_COMMAND in c for c in commands)
        report(found, "build command",
               f"stage {build.label()} runs `{' '.join(BUILD_COMMAND)}`" if found else
               f"stage {build.label()} never runs exactly `{' '.join(BUILD_COMMAND)}`")

    if rules is None:
        report(False, ".dockerignore", "missing: the context would carry target/ and .git")
    else:
        kept = [p for p in MUST_IGNORE if not is_ignored(p, rules)]
        report(not kept, ".dockerignore",
               f"excludes {', '.join(MUST_IGNORE)}" if not kept else f"keeps {', '.join(kept)}")
    return results


def env_values(stage: Stage) -> dict[str, str]:
    """The variables the stage's ENV instructions set (`ENV K=V ...` and `ENV K V`)."""
    values: dict[str, str] = {}
    for instruction in stage.instructions:
        if instruction.keyword != "ENV":
            continue
        words = shlex.split(instruction.args)
        if words and "=" not in words[0]:
            values[words[0]] = " ".join(words[1:])
            continue
        for word in words:
            key, _, value = word.partition("=")
            values[key] = value
    return values


def check_listener(final: Stage, health: Instruction | None, report) -> None:
    """The image's HEALTHCHECK must work with a config that has no [http] section: the image
    turns the listener on itself, on loopback (nothing exposed by default), on the port the
    HEALTHCHECK asks."""
    name = "health check out of the box"
    listen = env_values(final).get(LISTEN_ENV)
    if not listen:
        report(False, name, f"no ENV {LISTEN_ENV}: the listener is off by default, so a config "
               "without [http] leaves the container unhealthy forever")
        return
    host, _, port = listen.rpartition(":")
    if host not in LOOPBACK:
        report(False, name, f"ENV {LISTEN_ENV}={listen}: the image's default must be loopback; "
               "the endpoints have no authentication")
        return
    argv: list[str] = []
    if health is not None:
        _, rest = split_flags(health.args)
        argv = exec_form(rest.partition(" ")[2].strip()) or []
    url = next((b for a, b in zip(argv, argv[1:]) if a == "--url"), None)
    match = re.match(r"^http://([^/]+):(\d+)/", url or "")
    if match is None or match.group(1) not in LOOPBACK or match.group(2) != port:
        report(False, name, f"ENV {LISTEN_ENV}={listen} but the HEALTHCHECK asks {url}")
        return
    report(True, name, f"ENV {LISTEN_ENV}={listen}, HEALTHCHECK asks {url}")


def check_state_dir(final: Stage, stages: list[Stage], report) -> None:
    """The state directory must reach the image with mode 0700. COPY copies a directory's
    contents, and creates the destination directory itself 0755; so the parent is copied,
    and the stage it comes from makes the directory 0700."""
    name = "state dir 0700"
    parent, base = os.path.split(STATE_DIR)
    for instruction in final.instructions:
        if instruction.keyword != "COPY":
            continue
        flags, rest = split_flags(instruction.args)
        source = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        paths = exec_form(rest) or shlex.split(rest)
        dest, sources = paths[-1].rstrip("/") or "/", paths[:-1]
        if dest == STATE_DIR:
            report(False, name, f"line {instruction.line}: COPY … {STATE_DIR} copies into it and "
                   "creates the directory 0755; copy its parent instead")
            return
        if dest != parent or source is None:
            continue
        stage = next((s for s in stages[:-1] if source.lower() in (s.name, str(s.index))), None)
        if stage is None:
            continue
        for src in sources:
            made = os.path.join(src.rstrip("/"), base)
            if private_dir_made(stage, made):
                report(True, name, f"stage {stage.label()} makes {made} 0700; line "
                       f"{instruction.line} copies it to {STATE_DIR}")
                return
            report(False, name, f"stage {stage.label()} does not make {made} mode 0700 "
                   "(mkdir -m 0700 or chmod 0700)")
            return
    report(False, name, f"the final stage does not COPY --from a stage into {parent}/, so "
           f"{STATE_DIR} is not made 0700")


def private_dir_made(stage: Stage, path: str) -> bool:
    """Whether a RUN of `stage` runs `mkdir -m 0700 … path` or `chmod 0700 … path`."""
    for run in (i for i in stage.instructions if i.keyword == "RUN"):
        for command in build_commands(run):
            if path not in command or not command:
                continue
            args = command[1:]
            if command[0] == "mkdir":
                modes = [b for a, b in zip(args, args[1:]) if a == "-m"]
                modes += [a.split("=", 1)[1] for a in args if a.startswith("--mode=")]
                if any(m in ("0700", "700", "u=rwx,go=") for m in modes):
                    return True
            if command[0] == "chmod" and args and args[0] in ("0700", "700", "go-rwx"):
                return True
    return False


def binary_source(final: Stage, stages: list[Stage]) -> Stage | None:
    """The stage the final stage copies the daemon's binary from."""
    for instruction in final.instructions:
        if instruction.keyword != "COPY":
            continue
        flags, rest = split_flags(instruction.args)
        source = next((f.split("=", 1)[1] for f in flags if f.startswith("--from=")), None)
        if source is None:
            continue
        paths = exec_form(rest) or shlex.split(rest)
        dest, sources = paths[-1], paths[:-1]
        lands = dest == BINARY or (
            dest.rstrip("/") == os.path.dirname(BINARY)
            and any(os.path.basename(s) == os.path.basename(BINARY) for s in sources)
        )
        if lands:
            for stage in stages[:-1]:
                if source.lower() in (stage.name, str(stage.index)):
                    return stage
    return None


def build_commands(run: Instruction) -> list[list[str]]:
    """The simple commands of a RUN (split at `&&`, `||`, `;` and `|`)."""
    _, rest = split_flags(run.args)
    argv = exec_form(rest)
    if argv is not None:
        return [argv]
    lexer = shlex.shlex(rest, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    commands, current = [], []
    for token in lexer:
        if token in ("&&", "||", ";", "|", "&"):
            commands.append(current)
            current = []
        else:
            current.append(token)
    commands.append(current)
    return commands


# ----------------------------------------------------------------------------------------------
# Staging the build context


def stage_build_context(text: str, context: Path, rules, target: Path) -> Path:
    """Replays the build stage's WORKDIR and COPY instructions under `target`; returns the
    directory its build command runs in."""
    stages, _ = parse(text)
    build = binary_source(stages[-1], stages)
    if build is None:
        raise DockerfileError("no build stage to stage")
    workdir = "/"
    for instruction in build.instructions:
        if instruction.keyword == "WORKDIR":
            workdir = os.path.join(workdir, instruction.args.strip())
        elif instruction.keyword in ("COPY", "ADD"):
            flags, rest = split_flags(instruction.args)
            if any(f.startswith("--from=") for f in flags):
                raise DockerfileError(f"line {instruction.line}: COPY --from in the build stage")
            paths = exec_form(rest) or shlex.split(rest)
            dest = os.path.join(workdir, paths[-1])
            into_dir = paths[-1].endswith("/") or len(paths) > 2
            for source in paths[:-1]:
                copy_source(context, source, target / dest.lstrip("/"), into_dir, rules)
        elif instruction.keyword == "RUN" and BUILD_COMMAND in build_commands(instruction):
            return target / workdir.lstrip("/")
    raise DockerfileError(f"stage {build.label()} never runs {' '.join(BUILD_COMMAND)}")


def copy_source(context: Path, source: str, dest: Path, into_dir: bool, rules) -> None:
    matches = sorted(context.glob(source)) if any(c in source for c in "*?[") else [
        context / source]
    matches = [m for m in matches if m.exists()]
    if not matches:
        raise DockerfileError(f"COPY source {source!r} is not in the build context")
    for match in matches:
        rel = match.resolve().relative_to(context.resolve()).as_posix()
        if rel != "." and is_ignored(rel, rules):
            raise DockerfileError(f"COPY source {source!r} is excluded by .dockerignore")
        if match.is_dir():
            # A directory's contents are copied, not the directory itself.
            for root, dirs, files in os.walk(match):
                root_rel = Path(root).relative_to(context).as_posix()
                dirs[:] = [d for d in dirs if not is_ignored(_join(root_rel, d), rules)]
                for name in files:
                    if is_ignored(_join(root_rel, name), rules):
                        continue
                    out = dest / Path(root).relative_to(match) / name
                    out.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(Path(root) / name, out)
        else:
            out = dest / match.name if into_dir else dest
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(match, out)


def _join(root_rel: str, name: str) -> str:
    return name if root_rel == "." else f"{root_rel}/{name}"


# ----------------------------------------------------------------------------------------------
# Self-test: each broken variant must fail the named check


def self_test(text: str, rules) -> int:
    good = check(text, rules)
    failures = 0
    if not all(r.ok for r in good):
        print("FAIL self-test: the real Dockerfile does not pass", file=sys.stderr)
        failures += 1

    def variant(old: str, new: str) -> str:
        if old not in text:
            raise SystemExit(f"self-test: {old!r} is not in the Dockerfile any more; update it")
        return text.replace(old, new)

    rust_from = next(l for l in text.splitlines() if l.startswith("FROM rust"))
    user = next(l for l in text.splitlines() if l.startswith("USER"))
    cases = [
        ("single stage", variant(rust_from, ""), "multi-stage"),
        ("floating tag", variant(rust_from, "FROM rust:1.95-slim-bookworm AS build"), "pinned"),
        ("implicit latest", variant(rust_from, "FROM rust AS build"), "pinned"),
        ("explicit latest", variant(rust_from, "FROM rust:latest AS build"), "pinned"),
        ("short digest", variant(rust_from, "FROM rust:1.95.0@sha256:abc AS build"), "pinned"),
        ("root user", variant(user, "USER root"), "non-root user"),
        ("uid 0", variant(user, "USER 0:0"), "non-root user"),
        ("no user", variant(user, ""), "non-root user"),
        ("other stop signal", variant("STOPSIGNAL SIGTERM", "STOPSIGNAL SIGINT"),
         "STOPSIGNAL SIGTERM"),
        ("no stop signal", variant("STOPSIGNAL SIGTERM", ""), "STOPSIGNAL SIGTERM"),
        ("curl health check", re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n",
                                     "HEALTHCHECK CMD curl -f http://127.0.0.1:9464/readyz\n",
                                     text), "HEALTHCHECK"),
        ("no health check", re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n", "", text), "HEALTHCHECK"),
        ("health check off", re.sub(r"HEALTHCHECK[^\n]*\\\n[^\n]*\n", "HEALTHCHECK NONE\n",
                                    text), "HEALTHCHECK"),
        ("shell entrypoint", re.sub(r"ENTRYPOINT .*", f"ENTRYPOINT {BINARY}", text),
         "ENTRYPOINT"),
        ("shell cmd", re.sub(r"CMD \[\"--config.*", f"CMD --config {CONFIG}", text), "CMD"),
        ("unlocked build", variant("cargo build --release --locked", "cargo build --release"),
         "build command"),
        ("binary from nowhere", variant("COPY --from=build ", "COPY "),
         "binary from build stage"),
        ("no default listener", re.sub(rf"ENV {LISTEN_ENV}=\S*\n", "", text),
         "health check out of the box"),
        ("listener on another port", re.sub(rf"(ENV {LISTEN_ENV}=)\S*", r"\g<1>127.0.0.1:9000",
                                            text), "health check out of the box"),
        ("listener beyond loopback", re.sub(rf"(ENV {LISTEN_ENV}=)\S*", r"\g<1>0.0.0.0:9464",
                                            text), "health check out of the box"),
        ("state dir contents copied", re.sub(r"COPY --from=build (--chown=\S+ )?/state/ /var/lib/",
                                             f"COPY --from=build --chown=65532:65532 "
                                             f"/state/bayeux-mqtt-bridge {STATE_DIR}", text),
         "state dir 0700"),
        ("state dir not private", variant("mkdir -m 0700 ", "mkdir "), "state dir 0700"),
        ("state dir not copied", re.sub(r"COPY --from=build (--chown=\S+ )?/state/ /var/lib/\n",
                                        "", text), "state dir 0700"),
    ]
    for name, broken, expected in cases:
        results = check(broken, rules)
        failed = {r.name for r in results if not r.ok}
        if expected not in failed:
            print(f"FAIL self-test: {name}: expected the {expected!r} check to fail, "
                  f"failed: {sorted(failed) or 'none'}", file=sys.stderr)
            failures += 1
    ignore_cases = [
        ("no .dockerignore", None),
        ("target kept", ignore_rules(".git\n**/node_modules\n")),
        ("exception re-adds target", ignore_rules("target\n.git\n**/node_modules\n!target\n")),
        ("node_modules only at the top", ignore_rules("target\n.git\nnode_modules\n")),
    ]
    for name, broken_rules in ignore_cases:
        if all(r.ok for r in check(text, broken_rules) if r.name == ".dockerignore"):
            print(f"FAIL self-test: {name}: expected the .dockerignore check to fail",
                  file=sys.stderr)
            failures += 1
    total = len(cases) + len(ignore_cases) + 1
    print(f"self-test: {total - failures} of {total} cases behave")
    return 1 if failures else 0


# ----------------------------------------------------------------------------------------------


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dockerfile", default="Dockerfile")
    parser.add_argument("--stage-build-context", metavar="DIR")
    parser.add_argument("--self-test", action="store_true")
    options = parser.parse_args()

    dockerfile = Path(options.dockerfile)
    context = dockerfile.resolve().parent
    text = dockerfile.read_text(encoding="utf-8")
    ignore_file = context / ".dockerignore"
    rules = ignore_rules(ignore_file.read_text(encoding="utf-8")) if ignore_file.exists() else None

    if options.self_test:
        return self_test(text, rules)
    if options.stage_build_context:
        try:
            build_dir = stage_build_context(text, context, rules or [],
                                            Path(options.stage_build_context))
        except DockerfileError as e:
            print(f"error: {dockerfile}: {e}", file=sys.stderr)
            return 1
        print(build_dir)
        return 0

    results = check(text, rules)
    for r in results:
        print(f"  {'ok  ' if r.ok else 'FAIL'}  {r.name}: {r.detail}")
    failed = [r for r in results if not r.ok]
    if failed:
        print(f"error: {dockerfile}: {len(failed)} check(s) failed: "
              + ", ".join(sorted({r.name for r in failed})), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
