"""deploy/Dockerfile without a container engine: its stages and instructions,
the runtime packages against Debian 12's archive and the libraries the built
binaries need (ldd + dpkg -S + apt-cache), the shipped default config, and the
HEALTHCHECK command run against a real tandem.
"""

import json
import os
import re
import shlex
import shutil
import subprocess
import tempfile
import unittest

from deploy_common import (DEPLOY, ROOT, TANDEM, TANDEM_WORKER, TandemProc, check_config,
                           global_timing, load_toml, main, scaled, with_loopback_ports)

DOCKERFILE = os.path.join(DEPLOY, "Dockerfile")
DEFAULT_CONFIG = os.path.join(DEPLOY, "tandem.toml")
CONFIG_IN_IMAGE = "/etc/tandem/tandem.toml"
DOCKER_STOP_TIMEOUT = 10  # seconds `docker stop` waits before SIGKILL, by default

# Libraries a sanitizer build adds; the image is built without sanitizers.
SANITIZER_LIBRARIES = re.compile(r"^lib(asan|ubsan|lsan|tsan)\.so")


class Instruction:
    def __init__(self, keyword, args, line):
        self.keyword = keyword
        self.args = args
        self.line = line

    def __repr__(self):
        return "%s %s (line %d)" % (self.keyword, self.args, self.line)


class Stage:
    def __init__(self, base, name, line):
        self.base = base
        self.name = name
        self.line = line
        self.instructions = []

    def all(self, keyword):
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword):
        found = self.all(keyword)
        return found[-1] if found else None


def parse_dockerfile(path):
    """The stages of a Dockerfile: comments dropped, continuation lines joined."""
    stages = []
    pending, start = "", 0
    with open(path) as f:
        for number, raw in enumerate(f, 1):
            stripped = raw.strip()
            if not pending and (not stripped or stripped.startswith("#")):
                continue
            if pending and stripped.startswith("#"):
                continue  # a comment inside a continued instruction
            if not pending:
                start = number
            if stripped.endswith("\\"):
                pending += stripped[:-1] + " "
                continue
            text = pending + stripped
            pending = ""
            keyword, _, args = text.partition(" ")
            keyword = keyword.upper()
            args = args.strip()
            if keyword == "FROM":
                words = args.split()
                name = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
                stages.append(Stage(words[0], name, start))
            elif not stages:
                raise AssertionError("%s:%d: %s before FROM" % (path, start, keyword))
            else:
                stages[-1].instructions.append(Instruction(keyword, args, start))
    return stages


def exec_form(args):
    """The JSON array of an exec-form instruction, or None (shell form)."""
    try:
        value = json.loads(args)
    except json.JSONDecodeError:
        return None
    return value if isinstance(value, list) else None


def apt_install_packages(stage):
    """The package names every `apt-get install` of a stage's RUN lines installs."""
    packages = []
    for run in stage.all("RUN"):
        for command in re.split(r"&&|;|\|\|", run.args):
            words = shlex.split(command)
            if len(words) >= 2 and words[0] in ("apt-get", "apt") and "install" in words:
                after = words[words.index("install") + 1:]
                packages.extend(w for w in after if not w.startswith("-"))
    return packages


def shared_libraries(binary):
    """(soname, path) of every shared library `ldd binary` resolves, the
    sanitizers' runtimes included."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, timeout=30,
                         check=True).stdout
    libraries = []
    for line in out.splitlines():
        line = line.strip()
        match = re.match(r"(\S+) => (/\S+)", line)
        if match:
            libraries.append((match.group(1), match.group(2)))
        elif line.startswith("/"):  # the dynamic loader itself
            path = line.split()[0]
            libraries.append((os.path.basename(path), path))
        elif "=> not found" in line:
            raise AssertionError("%s: %s" % (binary, line))
    return libraries


def owning_packages(paths):
    """{path: the Debian package that installed it (dpkg -S)}, trying the
    merged-/usr spellings too; a path no package owns is left out."""
    spellings = {}
    for path in paths:
        candidates = [path, os.path.realpath(path)]
        for p in list(candidates):
            candidates.append(p[4:] if p.startswith("/usr/") else "/usr" + p)
        for p in candidates:
            spellings.setdefault(p, set()).add(path)
    # One call for all: dpkg prints an owner line for each path it knows and
    # exits 1 when any is unknown.
    result = subprocess.run(["dpkg", "-S"] + sorted(spellings), capture_output=True,
                            text=True, timeout=60)
    owners = {}
    for line in result.stdout.splitlines():
        # "libc6:amd64: /lib/x86_64-linux-gnu/libc.so.6"; diversions start "diversion by".
        if line.startswith("diversion"):
            continue
        package_part, _, listed = line.rpartition(": ")
        package = package_part.split(",")[0].split(":")[0].strip()
        for path in spellings.get(listed.strip(), ()):
            owners.setdefault(path, package)
    return owners


def dependency_closure(packages):
    """The packages, and everything they depend on (Depends and Pre-Depends,
    recursively), by apt-cache."""
    out = subprocess.run(
        ["apt-cache", "depends", "--recurse", "--no-recommends", "--no-suggests",
         "--no-conflicts", "--no-breaks", "--no-replaces", "--no-enhances"] + list(packages),
        capture_output=True, text=True, timeout=120, check=True).stdout
    closure = set()
    for line in out.splitlines():
        if line and not line[0].isspace() and not line.startswith("<"):
            closure.add(line.strip().split(":")[0])
    return closure


def debian_release():
    try:
        with open("/etc/os-release") as f:
            fields = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    except OSError:
        return None
    if fields.get("ID") != "debian":
        return None
    return fields.get("VERSION_ID", "").strip('"')


class DockerfileTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.stages = parse_dockerfile(DOCKERFILE)
        cls.build = cls.stages[0]
        cls.runtime = cls.stages[-1]
        with open(DEFAULT_CONFIG) as f:
            cls.config_text = f.read()
        cls.config = load_toml(cls.config_text)

    def test_it_has_a_build_stage_and_a_runtime_stage_both_on_debian_12(self):
        self.assertGreaterEqual(len(self.stages), 2, "multi-stage: a build and a runtime stage")
        for stage in self.stages:
            self.assertRegex(stage.base, r"^debian:(12|bookworm)(-slim)?(@sha256:[0-9a-f]{64})?$",
                             "stage at line %d is not Debian 12" % stage.line)
        self.assertEqual(self.build.name, "build")
        self.assertNotEqual(self.runtime.name, "build")

    def test_the_build_stage_copies_the_repository_and_runs_scripts_build(self):
        copies = [shlex.split(i.args) for i in self.build.all("COPY")]
        self.assertTrue(any(words[0] == "." for words in copies if words),
                        "the build stage copies the repository: COPY . DIR")
        runs = [i.args for i in self.build.all("RUN")]
        calls = [r for r in runs if re.search(r"(^|[\s/])scripts/build(\s|$)", r)]
        self.assertTrue(calls, "the build stage runs scripts/build (the README's script)")
        self.assertFalse(any("apt-get" in r or "cmake" in r for r in runs),
                         "packages and CMake flags come from scripts/build alone, not the "
                         "Dockerfile")
        # Every option it passes is one scripts/build knows.
        with open(os.path.join(ROOT, "scripts", "build")) as f:
            script = f.read()
        known = set(re.findall(r"^\s*(--[a-z-]+)\)", script, re.M))
        for call in calls:
            words = shlex.split(call.split("&&")[0])
            for word in words:
                if word.startswith("--"):
                    self.assertIn(word, known, "scripts/build has no option %s" % word)

    def test_the_runtime_stage_copies_the_built_binaries_and_the_default_config(self):
        sources = {}
        for copy in self.runtime.all("COPY"):
            words = shlex.split(copy.args)
            options = [w for w in words if w.startswith("--")]
            paths = [w for w in words if not w.startswith("--")]
            for source in paths[:-1]:
                sources[source] = (options, paths[-1])
        binaries = {s: v for s, v in sources.items() if "--from=build" in v[0]}
        names = {os.path.basename(s): dest for s, (_, dest) in binaries.items()}
        # The CMake targets, as scripts/build leaves them in its build folder.
        self.assertEqual(names.get("tandem"), "/usr/local/bin/tandem")
        self.assertEqual(names.get("tandem-worker"), "/usr/local/bin/tandem-worker")
        for source in binaries:
            self.assertTrue(source.startswith("/src/build/"), source)
        self.assertEqual(sources.get("deploy/tandem.toml", (None, None))[1], CONFIG_IN_IMAGE)

    def test_the_runtime_stage_runs_tandem_on_etc_tandem_as_a_non_root_user(self):
        user = self.runtime.last("USER")
        self.assertIsNotNone(user, "the runtime stage sets USER")
        uid = user.args.split(":")[0]
        self.assertNotIn(uid, ("root", "0"), "runs as a non-root user")
        self.assertTrue(uid.isdigit(), "a numeric USER lets Kubernetes' runAsNonRoot verify it")
        # USER comes after every RUN, so nothing runs as root after it and the
        # user exists when it takes effect.
        order = [i.keyword for i in self.runtime.instructions]
        self.assertLess(max(n for n, k in enumerate(order) if k == "RUN"), order.index("USER"))
        self.assertIn("useradd", " ".join(i.args for i in self.runtime.all("RUN")))
        entrypoint = exec_form(self.runtime.last("ENTRYPOINT").args)
        cmd = exec_form(self.runtime.last("CMD").args)
        self.assertEqual(entrypoint, ["/usr/local/bin/tandem"])
        self.assertEqual(cmd, ["-c", CONFIG_IN_IMAGE])

    def test_it_stops_with_sigterm_and_the_default_config_drains_within_docker_stop(self):
        self.assertEqual(self.runtime.last("STOPSIGNAL").args, "SIGTERM")
        drain_delay, grace_period = global_timing(self.config)
        self.assertLess(drain_delay + grace_period, DOCKER_STOP_TIMEOUT,
                        "drain_delay + grace_period must end before docker stop's SIGKILL")

    def test_the_default_config_is_valid_and_matches_the_exposed_ports(self):
        result = check_config(DEFAULT_CONFIG)
        self.assertEqual(result.returncode, 0, result.stdout + result.stderr)
        exposed = {int(p.split("/")[0]) for e in self.runtime.all("EXPOSE") for p in e.args.split()}
        for name, listener in self.config["listeners"].items():
            host, port = listener["listen"].rsplit(":", 1)
            self.assertEqual(host, "0.0.0.0", "listener %s must be reachable from outside" % name)
            self.assertIn(int(port), exposed)
        self.assertTrue(self.config["admin"]["listen"].startswith("127.0.0.1:"),
                        "the admin listener stays on loopback in the default image")

    def test_the_healthcheck_asks_the_admin_healthz(self):
        healthcheck = self.runtime.last("HEALTHCHECK")
        self.assertIsNotNone(healthcheck)
        options, _, command = healthcheck.args.partition("CMD ")
        for option in ("--interval=", "--timeout=", "--retries="):
            self.assertIn(option, options)
        argv = exec_form(command)
        self.assertIsNotNone(argv, "exec form: the slim image's /bin/sh (dash) has no /dev/tcp")
        self.assertIn("/healthz", argv[-1])
        admin_port = self.config["admin"]["listen"].rsplit(":", 1)[1]
        self.assertIn("127.0.0.1/%s" % admin_port, argv[-1],
                      "the HEALTHCHECK asks the admin port of deploy/tandem.toml")

    def test_the_healthcheck_command_passes_on_a_running_tandem_and_fails_without_one(self):
        healthcheck = self.runtime.last("HEALTHCHECK")
        argv = exec_form(healthcheck.args.partition("CMD ")[2])
        admin_port = self.config["admin"]["listen"].rsplit(":", 1)[1]
        directory = tempfile.mkdtemp(prefix="tandem-deploy-docker-")
        try:
            path = os.path.join(directory, "tandem.toml")
            with open(path, "w") as f:
                f.write(with_loopback_ports(self.config_text))
            tandem = TandemProc(path, cwd=directory)
            try:
                here = argv[:-1] + [argv[-1].replace("127.0.0.1/" + admin_port,
                                                     "127.0.0.1/%d" % tandem.admin_port)]
                passed = subprocess.run(here, capture_output=True, text=True, timeout=scaled(10))
                self.assertEqual(passed.returncode, 0, passed.stderr)
            finally:
                self.assertEqual(tandem.stop(), 0, tandem.output())
            failed = subprocess.run(here, capture_output=True, text=True, timeout=scaled(10))
            self.assertNotEqual(failed.returncode, 0, "healthy although tandem is gone")
        finally:
            shutil.rmtree(directory, ignore_errors=True)

    def test_the_runtime_stage_installs_no_build_tools(self):
        packages = apt_install_packages(self.runtime)
        self.assertTrue(packages, "the runtime stage installs its libraries with apt-get")
        for package in packages:
            self.assertFalse(package.endswith("-dev") or package in
                             ("g++", "gcc", "cmake", "ninja-build", "pkg-config", "make"),
                             "build tool %s in the runtime stage" % package)
        runs = " ".join(i.args for i in self.runtime.all("RUN"))
        self.assertIn("--no-install-recommends", runs)
        self.assertIn("rm -rf /var/lib/apt/lists", runs)

    def test_the_context_filter_keeps_local_build_folders_out(self):
        with open(DOCKERFILE + ".dockerignore") as f:
            patterns = {line.strip() for line in f if line.strip() and not line.startswith("#")}
        self.assertTrue({"build", "build-*", ".git"} <= patterns, patterns)


class RuntimePackagesTest(unittest.TestCase):
    """The runtime stage's package list against Debian 12's archive, as apt on
    this (Debian 12) machine sees it, and the built binaries' libraries."""

    @classmethod
    def setUpClass(cls):
        if debian_release() != "12":
            raise unittest.SkipTest("the runtime packages are checked against Debian 12's "
                                    "archive; this machine is not Debian 12")
        for tool in ("apt-cache", "dpkg", "ldd"):
            if shutil.which(tool) is None:
                raise unittest.SkipTest("%s is missing" % tool)
        cls.packages = apt_install_packages(parse_dockerfile(DOCKERFILE)[-1])
        # {binary: [(soname, path, owning package or None)]}
        cls.libraries = {}
        cls.sanitized = False  # a sanitizer build (its runtimes are not shipped)
        for binary in (TANDEM, TANDEM_WORKER):
            libraries = shared_libraries(binary)
            needed = [(name, path) for name, path in libraries
                      if not SANITIZER_LIBRARIES.match(name)]
            cls.sanitized = cls.sanitized or len(needed) < len(libraries)
            owners = owning_packages([path for _, path in needed])
            cls.libraries[binary] = [(name, path, owners.get(path)) for name, path in needed]

    def test_every_runtime_package_exists_in_debian_12(self):
        shown = subprocess.run(["apt-cache", "show", "--no-all-versions"] + self.packages,
                               capture_output=True, text=True, timeout=120)
        found = set(re.findall(r"^Package: (\S+)$", shown.stdout, re.M))
        missing = [p for p in self.packages if p not in found]
        self.assertEqual(missing, [], "not in the archive apt knows (apt-get update?)\n" +
                         shown.stderr)

    def test_the_runtime_packages_provide_every_library_the_binaries_need(self):
        closure = dependency_closure(self.packages)
        uncovered = []
        for binary, libraries in self.libraries.items():
            for name, path, package in libraries:
                if package is None:
                    uncovered.append("%s: %s (%s) belongs to no package" % (binary, name, path))
                elif package not in closure:
                    uncovered.append("%s: %s comes from %s, which the runtime stage does not "
                                     "install" % (os.path.basename(binary), name, package))
        self.assertEqual(uncovered, [])

    def test_each_listed_library_package_is_needed_or_explained(self):
        # Packages no binary links today: TLS is on the way (libevent's
        # bufferevent_openssl); ca-certificates is data, for upstream TLS.
        expected_extra = {"libevent-openssl-2.1-7", "libssl3", "ca-certificates"}
        # The image's build links tcmalloc; a sanitizer build, tested here too,
        # keeps the sanitizers' own allocator instead.
        if self.sanitized:
            expected_extra.add("libtcmalloc-minimal4")
        used = {package for libraries in self.libraries.values() for _, _, package in libraries}
        unused = set(self.packages) - used - expected_extra
        self.assertEqual(unused, set(), "runtime packages no binary needs")


if __name__ == "__main__":
    main()
