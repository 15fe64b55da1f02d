"""The Twisted plugin: discovery, options, the service tree, twist/twistd, packaging."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import sysconfig

from twisted.application.service import IService, IServiceMaker
from twisted.internet.testing import MemoryReactorClock
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial.unittest import SkipTest

from ser2tcp import _log, tap

from .helpers import (
    REPO,
    TWIST,
    TWISTD,
    Case,
    clean_env,
    free_port,
    listening_ports,
    port_config,
    recv_exactly,
    recv_until_closed,
    run,
    tcp_server,
    wait_until,
    write_config,
)


class DiscoveryTests(Case):
    def test_plugin_is_found(self):
        makers = [m for m in getPlugins(IServiceMaker) if m.tapname == "ser2tcp"]
        self.assertEqual(len(makers), 1)
        maker = makers[0]
        self.assertTrue(maker.description)
        self.assertIs(maker.options, tap.Options)
        self.assertIs(maker.makeService, tap.makeService)


class OptionsTests(Case):
    def setUp(self):
        self.pty = self.pty()
        self.port = free_port()
        self.path = self.config([port_config(self.pty.path, tcp_server(self.port))])

    def parse(self, *argv):
        options = tap.Options()
        options.parseOptions(list(argv))
        return options

    def test_config_and_verbosity(self):
        for argv, verbose in (
            (["-c", self.path], 0),
            (["--config", self.path], 0),
            (["-c", self.path, "-v"], 1),
            (["-c", self.path, "-vv"], 2),
            (["-v", "--verbose", "--config", self.path], 2),
        ):
            options = self.parse(*argv)
            self.assertEqual((options["config"], options["verbose"]), (self.path, verbose), argv)
            self.assertEqual(options.config.source, self.path)
            self.assertEqual(len(options.config.ports), 1)

    def test_missing_config(self):
        self.assertRaises(usage.UsageError, self.parse)
        self.assertRaises(usage.UsageError, self.parse, "-v")

    def test_empty_config_path(self):
        with self.assertRaises(usage.UsageError) as caught:
            self.parse("-c", "")
        self.assertEqual(str(caught.exception), "-c/--config: the path is empty")

    def test_make_service_builds_without_listening(self):
        self.addCleanup(setattr, sys, "excepthook", sys.excepthook)
        self.addCleanup(_log.set_verbosity, 0)
        reactor = MemoryReactorClock()
        service = tap.makeService(self.parse("-c", self.path), reactor=reactor)
        self.assertTrue(IService.providedBy(service))
        self.assertEqual(reactor.tcpServers, [])  # nothing bound while building
        service.privilegedStartService()
        service.startService()
        self.assertEqual([(p, i) for p, _, _, i in reactor.tcpServers], [(self.port, "127.0.0.1")])
        self.assertFalse(self.pty.slave_open(), "the serial port was opened without a client")
        stopped = service.stopService()
        reactor.advance(1)
        self.successResultOf(stopped)


class TwistTests(Case):
    """Real ``twist``/``twistd`` runs on a pty."""

    def setUp(self):
        self.pty = self.pty()
        self.port = free_port()
        self.dir = self.tempdir()
        self.path = self.config({"ports": [port_config(self.pty.path, tcp_server(self.port))]})

    def exchange(self):
        sock = self.connect(self.port)
        sock.sendall(b"to device")
        self.assertEqual(self.pty.read(9), b"to device")
        self.pty.write(b"to client")
        self.assertEqual(recv_exactly(sock, 9, self.deadline()), b"to client")
        return sock

    def check_stops(self, daemon):
        sock = self.exchange()
        code = daemon.stop(signal.SIGTERM, timeout=5)
        # twist and twistd end themselves with the signal after a clean stop
        # (-SIGTERM here, 143 in a shell); the ser2tcp command returns 0.
        self.assertIn(code, (0, -signal.SIGTERM))
        self.assertEqual(recv_until_closed(sock, self.deadline(5))[0], b"")
        self.assertFalse(daemon.holds(self.pty.path))
        self.assertFalse(self.pty.slave_open(), "the pty is still open")
        return code

    def test_twist_foreground(self):
        daemon = self.daemon([TWIST, "ser2tcp", "--config", self.path], cwd=self.dir)
        daemon.wait_listening([self.port])
        self.check_stops(daemon)

    def test_twist_with_the_ser2tcp_reactor(self):
        # A reactor plugin: twist refuses an unknown --reactor name.
        argv = [TWIST, "--reactor=ser2tcp", "ser2tcp", "--config", self.path]
        daemon = self.daemon(argv, cwd=self.dir)
        daemon.wait_listening([self.port])
        self.check_stops(daemon)

    def test_twistd_nodaemon(self):
        daemon = self.daemon([TWISTD, "-n", "ser2tcp", "--config", self.path], cwd=self.dir)
        daemon.wait_listening([self.port])
        self.check_stops(daemon)
        self.assertFalse(os.path.exists(os.path.join(self.dir, "twistd.pid")))

    def test_twistd_daemon(self):
        pidfile = os.path.join(self.dir, "ser2tcp.pid")
        logfile = os.path.join(self.dir, "ser2tcp.log")
        argv = [TWISTD, "--pidfile", pidfile, "--logfile", logfile, "ser2tcp", "--config", self.path, "-v"]
        result = run(argv, cwd=self.dir)
        self.assertEqual(result.returncode, 0, result.stderr)
        pid = int(wait_until(lambda: _read(pidfile), what="the pidfile"))
        self.addCleanup(_kill, pid)
        wait_until(lambda: self.port in listening_ports(pid), what="the daemon to listen")
        sock = self.exchange()
        os.kill(pid, signal.SIGTERM)
        self.assertEqual(recv_until_closed(sock, self.deadline(5))[0], b"")
        wait_until(lambda: not _alive(pid), 5, "the daemon to exit")
        wait_until(lambda: not os.path.exists(pidfile), 5, "the pidfile to be removed")
        self.assertFalse(self.pty.slave_open(), "the pty is still open")
        with open(logfile, encoding="utf-8") as f:
            log = f.read()
        self.assertIn("Client connected", log)
        self.assertNotIn("Traceback", log)

    def test_twist_bad_config(self):
        bad = self.config({"ports": [{"serial": {"port": "loop://"}}]})
        result = run([TWIST, "ser2tcp", "--config", bad], cwd=self.dir)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(result.stderr.splitlines(), [f'{bad}: ports[0]: missing "servers"'])

    def test_twist_address_in_use(self):
        daemon = self.daemon([TWIST, "ser2tcp", "--config", self.path], cwd=self.dir)
        daemon.wait_listening([self.port])
        result = run([TWIST, "ser2tcp", "--config", self.path], cwd=self.dir)
        self.assertEqual(result.returncode, 1, result.stderr)
        lines = result.stderr.splitlines()
        self.assertEqual(len(lines), 1, result.stderr)
        self.assertIn(f"{self.path}: ports[0].servers[0]: cannot listen", lines[0])

    def test_twistd_daemon_address_in_use_shows_the_whole_line(self):
        # twistd reports an error of its daemonized child in 100 bytes: the
        # listeners are probed before it forks, so the whole line is shown.
        busy = socket.socket()
        self.addCleanup(busy.close)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        long_dir = os.path.join(self.dir, "a-rather-long-directory-name-for-the-config-file")
        os.mkdir(long_dir)
        path = write_config(
            {"ports": [port_config(self.pty.path, tcp_server(port))]}, directory=long_dir, name="cfg.json"
        )
        pidfile = os.path.join(self.dir, "busy.pid")
        argv = [TWISTD, "--pidfile", pidfile, "--logfile", os.path.join(self.dir, "busy.log")]
        result = run([*argv, "ser2tcp", "-c", path], cwd=self.dir)
        self.assertEqual(result.returncode, 1, result.stderr)
        self.assertEqual(
            result.stderr.splitlines(),
            [f"{path}: ports[0].servers[0]: cannot listen on TCP 127.0.0.1:{port}: Address already in use"],
        )
        self.assertFalse(os.path.exists(pidfile))


def _read(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except FileNotFoundError:
        return None


def _alive(pid):
    """Running, and not a zombie waiting for an init that does not reap."""
    try:
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False
    return state not in ("Z", "X")


def _kill(pid):
    if _alive(pid):
        os.kill(pid, signal.SIGKILL)


class PackagingTests(Case):
    """``pip install`` into a fresh venv, normal and editable."""

    def setUp(self):
        self.dir = self.tempdir()
        # A copy of the checkout, so that building leaves nothing in it.
        self.src = os.path.join(self.dir, "src")
        shutil.copytree(
            REPO,
            self.src,
            ignore=shutil.ignore_patterns(
                ".git",
                "build",
                "dist",
                "*.egg-info",
                "_trial_temp*",
                "__pycache__",
                ".ruff_cache",
                "dropin.cache",
            ),
        )
        self.env = clean_env()

    def sh(self, *argv, timeout=120):
        result = run(argv, timeout=timeout, cwd=self.dir, env=self.env)
        self.assertEqual(result.returncode, 0, f"{argv}:\n{result.stdout}\n{result.stderr}")
        return result.stdout

    def make_venv(self, name):
        venv = os.path.join(self.dir, name)
        self.sh(sys.executable, "-m", "venv", "--system-site-packages", venv)
        python = os.path.join(venv, "bin", "python")
        # PEP 517 builds without isolation need bdist_wheel: setuptools >= 70.1
        # has it, older ones need the wheel package.
        probe = "try:\n import setuptools.command.bdist_wheel\nexcept ImportError:\n import wheel.bdist_wheel"
        if run([python, "-c", probe], cwd=self.dir, env=self.env).returncode != 0:
            result = run(
                [python, "-m", "pip", "install", "-q", "setuptools>=70.1"], 180, cwd=self.dir, env=self.env
            )
            if result.returncode != 0:
                raise SkipTest(f"cannot install setuptools>=70.1 into a venv: {result.stderr[-300:]}")
        return venv, python

    def bridge_dependencies(self, venv, python):
        """Make Twisted and pyserial importable if the base Python lacks them.

        ``--system-site-packages`` exposes the base interpreter's packages; when
        the test interpreter is itself a venv those are not ours, so the
        dependencies' directory is added by a .pth (its own .pth files, such as
        the editable install of this checkout, are not processed).
        """
        if run([python, "-c", "import twisted.plugin, serial"], cwd=self.dir, env=self.env).returncode == 0:
            return
        paths = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
        with open(os.path.join(self.site_packages(python), "zz_test_dependencies.pth"), "w") as f:
            f.write("".join(p + "\n" for p in sorted(paths)))

    def site_packages(self, python):
        return self.sh(python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").strip()

    def check_installed(self, venv, python, code_dir):
        """The venv's twist lists and runs the plugin found in ``code_dir``."""
        # <venv>/bin/twist exists only if Twisted itself is installed in the
        # venv; "python -m twisted" is the same runner.
        twist = os.path.join(venv, "bin", "twist")
        twist_argv = [twist] if os.path.exists(twist) else [python, "-m", "twisted"]
        listing = self.sh(*twist_argv, "--help")
        self.assertRegex(listing, r"(?m)^\s+ser2tcp\s+Share serial ports")
        usage_text = self.sh(*twist_argv, "ser2tcp", "--help")
        self.assertIn("--config", usage_text)
        where = self.sh(
            python,
            "-c",
            "import sys, ser2tcp.tap, twisted.plugins.ser2tcp_plugin as p\n"
            "from twisted.plugin import getPlugins\n"
            "from twisted.application.service import IServiceMaker\n"
            "assert [m for m in getPlugins(IServiceMaker) if m.tapname == 'ser2tcp']\n"
            "from importlib.metadata import version\n"
            "print(p.__file__); print(ser2tcp.tap.__file__); print(ser2tcp.__version__)\n"
            "print(version('ser2tcp'))",
        ).splitlines()
        plugin_file, tap_file, version, installed_version = where
        self.assertEqual(os.path.dirname(plugin_file), os.path.join(code_dir, "twisted", "plugins"))
        self.assertEqual(os.path.dirname(tap_file), os.path.join(code_dir, "ser2tcp"))
        # The distribution's version is the source's (read at build time).
        self.assertEqual(installed_version, version)
        self.assertEqual(self.sh(os.path.join(venv, "bin", "ser2tcp"), "-V"), f"ser2tcp {version}\n")

    def test_install(self):
        venv, python = self.make_venv("venv")
        self.sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", self.src)
        self.bridge_dependencies(venv, python)
        self.check_installed(venv, python, self.site_packages(python))

    def test_editable_install(self):
        venv, python = self.make_venv("venv-editable")
        self.sh(python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "-e", self.src)
        self.bridge_dependencies(venv, python)
        self.check_installed(venv, python, self.src)
