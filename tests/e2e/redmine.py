"""A real Redmine for end-to-end tests: Debian's ``redmine`` package, served on loopback.

``RealRedmine`` runs the packaged application (``/usr/share/redmine``) with every piece of state
under its own temporary directory: ``database.yml`` pointing at a private SQLite file,
``configuration.yml`` (notifications are written to files there, never sent), the secret key
base, ``log/``, ``tmp/``, ``files/``, and a ``Gemfile`` that adds WEBrick (Debian ships no puma)
to the package's own. Debian's Redmine finds an instance's directory as
``/usr/share/redmine/instances/$REDMINE_INSTANCE``; a name of ``../`` steps up to ``/`` (both
through the ``instances -> /var/lib/redmine`` symlink and lexically) followed by the temporary
directory points it there, so the system instance under ``/etc/redmine`` and
``/var/lib/redmine`` is neither used nor touched.

The migrated and populated database is built once per package version (and version of the
set-up below) as a template, cached under ``/var/tmp/imap-ingest-e2e``; a server starts from
a copy of it, and ``reset()`` restores the copy in place (SQLite's backup API, inside the
server, with Redmine's caches cleared), so each test sees the template's ids and nothing
else.

The template holds:

* the incoming-mail web service enabled with ``MAIL_KEY``, the REST API enabled, an admin whose
  API key is ``ADMIN_KEY``, ``mail_from`` = ``redmine@example.org``;
* Redmine's default data in English (trackers Bug, Feature, Support; roles; statuses);
* the private project ``support`` with all trackers and the issue categories ``request`` and
  ``bug``;
* ``alice@example.org``, a Reporter of ``support`` (may add issues and notes), and
  ``mallory@example.org``, an active user who is not a member: as the project is private, he may
  do nothing there.

SQLite takes one writer at a time: DESIGN.md measured 422 "database is locked" for concurrent
POSTs (Passenger, two processes). One WEBrick process did not show it here (64 POSTs from 8
threads, all 201), but the server runs every request under ``Rack::Lock`` anyway and delivers
mail inline (no job thread beside a request), so no test can depend on luck.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import http.client
import os
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import requests

from ..support.dovecot import Lifecycle, _die_with_parent, free_ports

REDMINE_ROOT = Path("/usr/share/redmine")
# Shared by every session on this machine. (Not configurable by an IMAP_INGEST_ variable:
# imap-ingest reads every such variable as a key of its configuration.)
CACHE_DIR = Path("/var/tmp/imap-ingest-e2e")
HOST = "127.0.0.1"
PROJECT = "support"
MAIL_KEY = "e2e-incoming-mail-key"
ADMIN_KEY = "e2e0admin0api0key0000000000000000000000"  # 40 characters, as Redmine's own
EMISSION_ADDRESS = "redmine@example.org"
# Redmine 6.0.6 raises Rack's form limit (4 MiB since Rack 2.2.14) to this in config/boot.rb.
REDMINE_6_FORM_LIMIT = 32 * 1024 * 1024
RESET_PATH = "/__imap_ingest_e2e__/reset"

_BUILD_TIMEOUT = 600.0
_START_TIMEOUT = 90.0
_STOP_TIMEOUT = 15.0
_HTTP_TIMEOUT = 30.0

_GEMFILE = """\
# Written by tests/e2e/redmine.py: the package's Gemfile, plus what serving it here needs.
eval_gemfile "{root}/Gemfile"
# The package's Gemfile adds sqlite3 only when some instance's database.yml uses it.
gem "sqlite3", "~> 1.4.0" unless dependencies.any? {{ |dep| dep.name == "sqlite3" }}
# Debian ships no puma; WEBrick (ruby-webrick, a dependency of libruby) is not in the bundle.
gem "webrick"
"""

_SETUP_RAKE = """\
# Written by tests/e2e/redmine.py: the state imap-ingest's end-to-end tests start from.
namespace :e2e do
  desc "Keep db:migrate from writing db/schema.rb into the package's directory"
  task :no_schema_dump => :environment do
    ActiveRecord::Base.dump_schema_after_migration = false
  end

  desc "Forget the column lists Rails read before the migrations ran in this process"
  task :forget_schema => :environment do
    ActiveRecord::Base.connection.schema_cache.clear!
    ActiveRecord::Base.descendants.each(&:reset_column_information)
  end

  desc "Settings, users, the support project"
  task :setup => :environment do
    ActiveRecord::Base.transaction do
      Setting.mail_handler_api_enabled = "1"
      Setting.mail_handler_api_key = ENV.fetch("E2E_MAIL_KEY")
      Setting.rest_api_enabled = "1"
      Setting.mail_from = ENV.fetch("E2E_EMISSION_ADDRESS")
      Setting.host_name = "redmine.example.org"

      admin = User.find_by!(login: "admin")
      admin.update!(mail: "admin@example.org", must_change_passwd: false)
      Token.where(user: admin, action: "api").delete_all
      Token.create!(user: admin, action: "api").update_column(:value, ENV.fetch("E2E_ADMIN_KEY"))

      users = {}
      [%w(alice Alice Member), %w(mallory Mallory Outsider)].each do |login, first, last|
        user = User.new(firstname: first, lastname: last, mail: "#{login}@example.org")
        user.login = login
        user.password = user.password_confirmation = "#{login}-password-1234"
        user.must_change_passwd = false
        user.save!
        users[login] = user
      end

      # Private: a public project would give mallory the Non member role, which may add issues.
      project = Project.new(name: "Support", identifier: ENV.fetch("E2E_PROJECT"),
                            is_public: false)
      project.trackers = Tracker.sorted.to_a
      project.enabled_module_names = %w(issue_tracking)
      project.save!
      %w(request bug).each { |name| IssueCategory.create!(project: project, name: name) }
      Member.create!(project: project, principal: users.fetch("alice"),
                     roles: [Role.find_by!(name: "Reporter")])
    end
  end
end
"""

CONFIG_RU = """\
# Written by tests/e2e/redmine.py: Debian's Redmine for imap-ingest's end-to-end tests.
require "fileutils"
require "json"
require "{root}/config/environment"

# Notifications go through ActiveJob: run them inline, inside the request that caused them.
ActiveJob::Base.queue_adapter = :inline

E2E_TOKEN = ENV.fetch("E2E_TOKEN")
E2E_TEMPLATE = ENV.fetch("E2E_TEMPLATE")

# POST {reset}: the database back to the template (SQLite's backup API, through Redmine's
# own connection), then the settings given as a JSON object; Redmine's caches are cleared.
reset = lambda do |env|
  request = Rack::Request.new(env)
  token = env["HTTP_X_E2E_TOKEN"].to_s
  unless request.post? && Rack::Utils.secure_compare(token, E2E_TOKEN)
    next [403, {{"Content-Type" => "text/plain"}}, ["forbidden\\n"]]
  end
  settings = JSON.parse(request.body.read.then {{ |body| body.empty? ? "{{}}" : body }})
  ActiveRecord::Base.connection_pool.with_connection do |connection|
    template = SQLite3::Database.new(E2E_TEMPLATE, readonly: true)
    begin
      backup = SQLite3::Backup.new(connection.raw_connection, "main", template, "main")
      backup.step(-1)
      backup.finish
    ensure
      template.close
    end
  end
  # Every pooled connection reopens the file: no statement or page cached from before.
  ActiveRecord::Base.connection_pool.disconnect!
  Setting.clear_cache
  settings.each do |name, value|
    setting = Setting.find_by(name: name) || Setting.new(name: name)
    setting.value = value
    setting.save!
  end
  Setting.clear_cache
  Rails.cache.clear
  [Attachment.storage_path, ActionMailer::Base.file_settings[:location]].each do |dir|
    FileUtils.rm_rf(Dir.children(dir).map {{ |name| File.join(dir, name) }})
  end
  [200, {{"Content-Type" => "text/plain"}}, ["reset\\n"]]
end

# SQLite takes one writer at a time (concurrent POSTs make Redmine answer 422 "database is
# locked"): one request at a time, whatever WEBrick's threads do.
use Rack::Lock
map("{reset}") {{ run reset }}
run Rails.application
"""


class RedmineNotInstalled(RuntimeError):
    """Debian's redmine package (with redmine-sqlite) is not installed."""


class RedmineError(RuntimeError):
    """The test Redmine could not be built, started or reset."""


def installed_version() -> str | None:
    """The installed ``redmine`` package's version (dpkg), or None if it is not installed."""
    dpkg_query = shutil.which("dpkg-query")
    if dpkg_query is None or not (REDMINE_ROOT / "config" / "environment.rb").is_file():
        return None
    done = subprocess.run([dpkg_query, "-W", "-f=${Status}\t${Version}", "redmine"],
                          capture_output=True, text=True, check=False)
    status, _, version = done.stdout.partition("\t")
    return version if done.returncode == 0 and status.endswith(" installed") else None


def require_installed() -> str:
    """The package version; raises RedmineNotInstalled naming what to install."""
    version = installed_version()
    if version is None:
        raise RedmineNotInstalled(
            "Debian's redmine is not installed: apt-get install redmine redmine-sqlite")
    for tool in ("ruby", "bundle"):
        if shutil.which(tool) is None:
            raise RedmineNotInstalled(f"{tool} not found (it comes with the redmine package)")
    return version


def template_path(cache_dir: Path = CACHE_DIR) -> Path:
    """Where the template database for the installed package and this set-up is cached."""
    version = require_installed()
    digest = hashlib.sha256("\0".join(
        (_SETUP_RAKE, _GEMFILE, MAIL_KEY, ADMIN_KEY, EMISSION_ADDRESS, PROJECT)).encode())
    safe = re.sub(r"[^A-Za-z0-9.+-]", "_", version)
    return cache_dir / f"redmine-{safe}-{digest.hexdigest()[:12]}.sqlite3"


def ensure_template(cache_dir: Path = CACHE_DIR) -> tuple[Path, float | None]:
    """The cached template database, built first if missing: (path, build seconds or None)."""
    path = template_path(cache_dir)
    if path.is_file():
        return path, None
    cache_dir.mkdir(parents=True, exist_ok=True)
    with open(cache_dir / "redmine-build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another session may be building it right now
        if path.is_file():
            return path, None
        started = time.monotonic()
        _build_template(path)
        return path, time.monotonic() - started


def _build_template(path: Path) -> None:
    """Migrate a fresh database, load the default data and the set-up, in one rake run."""
    directory = Path(tempfile.mkdtemp(prefix="imap-ingest-redmine-build-"))
    try:
        database = directory / "db" / "redmine.sqlite3"
        write_instance(directory, database)
        (directory / "rakelib").mkdir()
        (directory / "rakelib" / "e2e.rake").write_text(_SETUP_RAKE)
        env = ruby_env(directory, {
            "REDMINE_LANG": "en", "E2E_MAIL_KEY": MAIL_KEY, "E2E_ADMIN_KEY": ADMIN_KEY,
            "E2E_EMISSION_ADDRESS": EMISSION_ADDRESS, "E2E_PROJECT": PROJECT,
            # Should a dump happen anyway, it lands here, not in /usr/share/redmine/db.
            "SCHEMA": str(directory / "db" / "schema.rb")})
        # One process: the column lists read before migrating must be forgotten before use.
        command = [bundle(), "exec", "rake", "--rakelibdir", str(directory / "rakelib"),
                   "e2e:no_schema_dump", "db:migrate", "e2e:forget_schema",
                   "redmine:load_default_data", "e2e:setup"]
        try:
            done = subprocess.run(command, cwd=REDMINE_ROOT, env=env, stdin=subprocess.DEVNULL,
                                  capture_output=True, text=True, errors="replace",
                                  timeout=_BUILD_TIMEOUT, check=False)
        except subprocess.TimeoutExpired as exc:
            raise RedmineError(f"building the template took over {_BUILD_TIMEOUT:.0f} s") from exc
        if done.returncode != 0 or not database.is_file():
            output = _tail(done.stdout + done.stderr, 40)
            log = _tail(_read(directory / "log" / "production.log"), 20)
            raise RedmineError(f"building the Redmine template failed (exit {done.returncode}):"
                               f"\n{output}\n--- production.log ---\n{log}")
        partial = path.with_name(f".{path.name}.{os.getpid()}.partial")
        shutil.copyfile(database, partial)
        os.replace(partial, path)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class RealRedmine(Lifecycle):
    """Debian's Redmine served by WEBrick on 127.0.0.1, all its state in a temporary directory.

    ``form_limit`` sets Rack's limit on form bodies (``RACK_QUERY_PARSER_BYTESIZE_LIMIT``);
    unset, the stock 4 MiB applies. Use as a context manager, or ``start()`` then ``close()``.
    """

    def __init__(self, *, form_limit: int | None = None, cache_dir: Path = CACHE_DIR) -> None:
        self.version = require_installed()
        self.form_limit = form_limit
        self.cache_dir = cache_dir
        self.port = 0
        self.timings: dict[str, float] = {}
        self._log_mark = 0
        self._token = secrets.token_hex(16)
        self._proc: subprocess.Popen[bytes] | None = None
        self._session: requests.Session | None = None
        self.directory = Path(tempfile.mkdtemp(prefix="imap-ingest-redmine-"))

    # -- life cycle ------------------------------------------------------------------------

    @property
    def url(self) -> str:
        """Redmine's base URL (imap-ingest posts to ``{url}/mail_handler``)."""
        return f"http://{HOST}:{self.port}"

    @property
    def log_file(self) -> Path:
        """Rails' log: every request, MailHandler's reasons, exceptions."""
        return self.directory / "log" / "production.log"

    @property
    def server_log(self) -> Path:
        """WEBrick's own output (start-up, access log, errors before Rails)."""
        return self.directory / "log" / "server.log"

    @property
    def mail_dir(self) -> Path:
        """Where Redmine's notifications are written instead of being sent."""
        return self.directory / "mail"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Copy the template (built if missing), start the server, wait until it answers."""
        template, built = ensure_template(self.cache_dir)
        if built is not None:
            self.timings["template_build"] = built
        started = time.monotonic()
        database = self.directory / "db" / "redmine.sqlite3"
        write_instance(self.directory, database)
        private_template = self.directory / "db" / "template.sqlite3"
        shutil.copyfile(template, private_template)
        shutil.copyfile(private_template, database)
        (self.directory / "config.ru").write_text(
            CONFIG_RU.format(root=REDMINE_ROOT, reset=RESET_PATH))
        extra = {"E2E_TOKEN": self._token, "E2E_TEMPLATE": str(private_template)}
        if self.form_limit is not None:
            extra["RACK_QUERY_PARSER_BYTESIZE_LIMIT"] = str(self.form_limit)
        command = [bundle(), "exec", "rackup", "--server", "webrick", "--host", HOST,
                   "--port", "0", "--env", "production", str(self.directory / "config.ru")]
        with open(self.server_log, "ab") as output:
            self._proc = subprocess.Popen(
                command, cwd=REDMINE_ROOT, env=ruby_env(self.directory, extra),
                stdin=subprocess.DEVNULL, stdout=output, stderr=subprocess.STDOUT,
                start_new_session=True, preexec_fn=_die_with_parent())
        try:
            self._wait_ready(time.monotonic() + _START_TIMEOUT)
        except BaseException:
            self.stop()
            raise
        self.timings["start"] = time.monotonic() - started
        self._log_mark = self.log_file.stat().st_size

    def _wait_ready(self, deadline: float) -> None:
        while self.port == 0:
            self._check_alive()
            found = re.search(r"HTTPServer#start: pid=\d+ port=(\d+)", _read(self.server_log))
            if found:
                self.port = int(found[1])
            elif time.monotonic() > deadline:
                self._fail(f"Redmine did not listen within {_START_TIMEOUT:.0f} s")
            else:
                time.sleep(0.05)  # WEBrick says where it listens only in its log
        # Rails is loaded before WEBrick listens; this proves the app and the database answer.
        answer = self.http.get(f"{self.url}/mail_handler", params={"key": MAIL_KEY},
                               timeout=max(1.0, deadline - time.monotonic()))
        if answer.status_code != 200:
            self._fail(f"GET /mail_handler answered {answer.status_code}, not 200")

    def _check_alive(self) -> None:
        if self._proc is not None and self._proc.poll() is not None:
            self._fail(f"Redmine exited during start-up (exit {self._proc.returncode})")

    def _fail(self, why: str) -> None:
        raise RedmineError(f"{why}\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        """The last lines of WEBrick's output and of Rails' log, for error messages."""
        return (f"--- {self.server_log} ---\n{_tail(_read(self.server_log), lines)}\n"
                f"--- {self.log_file} ---\n{_tail(_read(self.log_file), lines)}")

    def stop(self) -> None:
        """Stop the server (SIGTERM to its process group, SIGKILL after a grace period)."""
        if self._session is not None:
            self._session.close()
            self._session = None
        proc, self._proc = self._proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=_STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

    def close(self) -> None:
        """Stop the server and delete its directory."""
        try:
            self.stop()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)


    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<RealRedmine {self.version} {self.url} {state} {self.directory}>"

    # -- state -----------------------------------------------------------------------------

    def reset(self, settings: Mapping[str, str] | None = None) -> None:
        """The database back to the template, then ``settings`` (Redmine setting names)."""
        started = time.monotonic()
        answer = self.http.post(f"{self.url}{RESET_PATH}", json=dict(settings or {}),
                                headers={"X-E2E-Token": self._token}, timeout=_HTTP_TIMEOUT)
        if answer.status_code != 200:
            self._fail(f"reset answered {answer.status_code}: {answer.text[:200]}")
        self.timings["reset"] = time.monotonic() - started
        self._log_mark = self.log_file.stat().st_size

    def log_since_reset(self) -> str:
        """What Rails logged since the last ``reset()`` (or since start)."""
        with self.log_file.open("rb") as log:
            log.seek(self._log_mark)
            return log.read().decode(errors="replace")

    def mail_handler_posts(self) -> int:
        """How many POSTs /mail_handler received since the last ``reset()``."""
        return self.log_since_reset().count('Started POST "/mail_handler"')

    # -- Redmine's REST API, as the admin ------------------------------------------------

    @property
    def http(self) -> requests.Session:
        """A keep-alive session for the helpers (closed by ``stop``)."""
        if self._session is None:
            self._session = requests.Session()
        return self._session

    def api(self, path: str, **params: str | int) -> Any:
        """GET ``path`` (e.g. ``/issues.json``) with the admin's API key; the decoded JSON."""
        answer = self.http.get(f"{self.url}{path}", params=params, timeout=_HTTP_TIMEOUT,
                               headers={"X-Redmine-API-Key": ADMIN_KEY})
        if answer.status_code != 200:
            raise RedmineError(f"GET {path} answered {answer.status_code}: {answer.text[:200]}")
        return answer.json()

    def issues(self, project: str = PROJECT) -> list[dict[str, Any]]:
        """Every issue of ``project``, open or closed, oldest first (without journals)."""
        found: list[dict[str, Any]] = []
        while True:
            page = self.api("/issues.json", project_id=project, status_id="*", sort="id",
                            offset=len(found), limit=100)
            found.extend(page["issues"])
            if not page["issues"] or len(found) >= page["total_count"]:
                return found

    def update_issue(self, number: int, **fields: int | str) -> None:
        """Change issue ``number`` as the admin (``status_id=5``, ``tracker_id=3``, ...)."""
        answer = self.http.put(f"{self.url}/issues/{number}.json", json={"issue": fields},
                               timeout=_HTTP_TIMEOUT, headers={"X-Redmine-API-Key": ADMIN_KEY})
        if answer.status_code not in (200, 204):
            raise RedmineError(f"PUT issue {number} answered {answer.status_code}: "
                               f"{answer.text[:200]}")

    def ids(self, kind: str) -> dict[str, int]:
        """Redmine's ``issue_statuses`` or ``trackers``: id by lower-case name."""
        return {str(item["name"]).lower(): int(item["id"])
                for item in self.api(f"/{kind}.json")[kind]}

    def issue(self, number: int) -> dict[str, Any]:
        """One issue with its journals and attachments."""
        issue: dict[str, Any] = self.api(f"/issues/{number}.json",
                                         include="journals,attachments")["issue"]
        return issue

    def issues_with_journals(self, project: str = PROJECT) -> list[dict[str, Any]]:
        """Every issue of ``project`` with its journals and attachments, oldest first."""
        return [self.issue(int(issue["id"])) for issue in self.issues(project)]

    def download(self, content_url: str) -> bytes:
        """An attachment's content (``content_url`` from the issue's JSON)."""
        answer = self.http.get(content_url, timeout=_HTTP_TIMEOUT,
                               headers={"X-Redmine-API-Key": ADMIN_KEY})
        answer.raise_for_status()
        return answer.content


# -- helpers ---------------------------------------------------------------------------------



# Appended to config.ru by ``passenger(immediate=True)``: writers take SQLite's write lock
# when they begin.
_IMMEDIATE = """
ActiveRecord::ConnectionAdapters::SQLite3Adapter.prepend(Module.new do
  def begin_db_transaction
    log("begin immediate transaction", "TRANSACTION") { @connection.transaction(:immediate) }
  end
end)
"""


@contextlib.contextmanager
def passenger(template: Path, processes: int = 2, immediate: bool = False,
              ruby: str = "") -> Iterator[tuple[str, Path]]:
    """Debian's Redmine under Passenger with ``processes`` processes on a fresh copy of the
    template database, without Rack::Lock: concurrent POSTs meet SQLite's single writer as
    they do in production (422 "database is locked"; ``immediate`` makes writers wait for
    each other instead). ``ruby`` is appended to config.ru, after the application is loaded
    (bench/redmine_probe.rb). Yields (base URL, the database file)."""
    directory = Path(tempfile.mkdtemp(prefix="redmine-passenger-"))
    database = directory / "db" / "redmine.sqlite3"
    write_instance(directory, database)
    shutil.copyfile(template, database)
    config = CONFIG_RU.format(root=REDMINE_ROOT, reset=RESET_PATH)
    (directory / "config.ru").write_text(config.replace("use Rack::Lock\n", "")
                                         + (_IMMEDIATE if immediate else "") + ruby)
    port, = free_ports(1)
    env = ruby_env(directory, {"E2E_TOKEN": "-", "E2E_TEMPLATE": str(template)})
    server = subprocess.Popen(
        ["passenger", "start", str(directory), "--engine", "builtin", "--address", "127.0.0.1",
         "--port", str(port), "--max-pool-size", str(processes), "--min-instances",
         str(processes), "--environment", "production", "--log-file",
         str(directory / "log" / "passenger.log"), "--pid-file",
         str(directory / "tmp" / "passenger.pid"), "--disable-security-update-check",
         "--disable-anonymous-telemetry"],
        cwd=directory, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_for_passenger(url, server, processes)
        yield url, database
    finally:
        server.terminate()
        server.wait(timeout=60)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for_passenger(url: str, server: subprocess.Popen[bytes], processes: int) -> None:
    """Until every process has answered (Passenger starts the second one on demand)."""
    deadline = time.monotonic() + 120
    answered = 0
    while answered < 2 * processes:
        assert server.poll() is None and time.monotonic() < deadline, "passenger did not start"
        try:
            connection = http.client.HTTPConnection("127.0.0.1", int(url.rsplit(":", 1)[1]),
                                                    timeout=60)
            connection.request("GET", f"/mail_handler?key={MAIL_KEY}")
            answered += connection.getresponse().status == 200
            connection.close()
        except OSError:
            time.sleep(0.3)


def issue_count(database: Path) -> int:
    """Issues in a Redmine database file."""
    with sqlite3.connect(database) as db:
        return int(db.execute("SELECT COUNT(*) FROM issues").fetchone()[0])


def write_instance(directory: Path, database: Path) -> None:
    """The instance directory Debian's multi-tenancy code expects, plus our Gemfile."""
    for sub in ("config", "db", "log", "tmp", "files", "mail", "public/plugin_assets"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    config = directory / "config"
    (config / "database.yml").write_text(
        f"production:\n  adapter: sqlite3\n  database: {database}\n  timeout: 5000\n")
    (config / "configuration.yml").write_text(
        "production:\n"
        "  attachments_storage_path: " + str(directory / "files") + "\n"
        "  email_delivery:\n"
        "    delivery_method: :file\n"
        "    file_settings:\n"
        f"      location: {directory / 'mail'}\n")
    secret = config / "secret_key.txt"
    if not secret.exists():
        secret.write_text(secrets.token_hex(64) + "\n")
    (directory / "Gemfile").write_text(_GEMFILE.format(root=REDMINE_ROOT))


def ruby_env(directory: Path, extra: Mapping[str, str]) -> dict[str, str]:
    """Our environment without anything Ruby, Bundler, Rails or Redmine would read from it."""
    prefixes = ("BUNDLE_", "GEM_", "RUBY", "RAILS_", "RACK_", "REDMINE_", "X_DEBIAN_", "E2E_")
    env = {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}
    env.update({
        "RAILS_ENV": "production",
        # From /usr/share/redmine/instances (-> /var/lib/redmine) up to "/", then our directory.
        "REDMINE_INSTANCE": "../" * 16 + str(directory).lstrip("/"),
        "BUNDLE_GEMFILE": str(directory / "Gemfile"),
        "BUNDLE_USER_HOME": str(directory / "tmp" / "bundle"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        **extra,
    })
    return env


def bundle() -> str:
    found = shutil.which("bundle")
    if found is None:
        raise RedmineNotInstalled("bundle not found (package ruby-bundler, a redmine dependency)")
    return found


def _read(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _tail(text: str, lines: int) -> str:
    return "\n".join(text.splitlines()[-lines:])

