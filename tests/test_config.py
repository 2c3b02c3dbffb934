"""Config: every key validated, errors as FILE:LINE with hints, secrets never shown."""

from __future__ import annotations

import os

from twisted.trial.unittest import SynchronousTestCase

from smtpmailer.config import load_config, parse_config, render_config
from smtpmailer.ini import ConfigError
from smtpmailer.units import format_duration, parse_duration, parse_rate, parse_size

MINIMAL = "[Relay]\nhost = smtp.example.com\n"


class UnitTests(SynchronousTestCase):
    def test_durations(self) -> None:
        self.assertEqual(parse_duration("30"), 30)
        self.assertEqual(parse_duration("30s"), 30)
        self.assertEqual(parse_duration("5m"), 300)
        self.assertEqual(parse_duration("2h"), 7200)
        self.assertEqual(parse_duration("5d"), 432000)
        self.assertEqual(parse_duration("250ms"), 0.25)
        for bad in ("", "5x", "-1s", "m", "1.2.3s"):
            self.assertRaises(ValueError, parse_duration, bad)

    def test_sizes(self) -> None:
        self.assertEqual(parse_size("10MB"), 10 * 1024 * 1024)
        self.assertEqual(parse_size("512KB"), 512 * 1024)
        self.assertEqual(parse_size("1gb"), 1024**3)
        self.assertEqual(parse_size("100"), 100)
        self.assertRaises(ValueError, parse_size, "ten MB")

    def test_rates(self) -> None:
        self.assertEqual(parse_rate("100/m"), (100, 60.0))
        self.assertEqual(parse_rate("5/s"), (5, 1.0))
        for bad in ("0/m", "100", "1/y"):
            self.assertRaises(ValueError, parse_rate, bad)

    def test_format_duration_round_trips(self) -> None:
        for text in ("30s", "5m", "2h", "5d", "90s"):
            self.assertEqual(
                parse_duration(format_duration(parse_duration(text))), parse_duration(text)
            )


class ConfigTests(SynchronousTestCase):
    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, "/etc/smtpmailer/smtpmailer.conf")
        return str(caught.exception)

    def test_defaults(self) -> None:
        config = parse_config(MINIMAL, "/etc/smtpmailer/smtpmailer.conf")
        self.assertEqual(config.daemon.state_dir, "/var/lib/smtpmailer")
        self.assertEqual(config.queue.path, "/var/lib/smtpmailer/queue.sqlite3")
        self.assertEqual(config.queue.retry_delay, 60)
        self.assertEqual(config.queue.max_message_size, 25 * 1024 * 1024)
        (relay,) = config.relays
        self.assertEqual((relay.port, relay.security, relay.verify), (587, "starttls", True))
        self.assertEqual(relay.max_connections, 4)

    def test_port_follows_security(self) -> None:
        text = "[Relay]\nhost = h\nsecurity = tls\n"
        self.assertEqual(parse_config(text, "c").relays[0].port, 465)

    def test_unknown_key_has_line_and_hint(self) -> None:
        text = "[Queue]\npoll_interval = 1s\nretry_dealy = 5m\n" + MINIMAL
        self.assertEqual(
            self.error(text),
            "/etc/smtpmailer/smtpmailer.conf:3: unknown key 'retry_dealy' in [Queue] "
            "(did you mean 'retry_delay'?)",
        )

    def test_unknown_section_has_hint(self) -> None:
        self.assertIn(
            ":1: unknown section [Releay] (did you mean 'Relay'?)",
            self.error("[Releay]\nhost = x\n"),
        )

    def test_bad_values_name_the_line(self) -> None:
        cases = {
            "[Queue]\nretry_delay = soon\n": ":2: retry_delay: 'soon' is not a duration",
            "[Queue]\nbatch_size = 0\n": ":2: batch_size: 0 is out of range",
            "[Queue]\nmax_message_size = big\n": ":2: max_message_size: 'big' is not a size",
            "[Queue]\nbackend = mysql\n": ":2: backend: 'mysql' is not one of",
            "[Relay]\nhost = h\nsecurity = ssl\n": ":3: security: 'ssl' is not one of",
            "[Relay]\nhost = h\nport = 99999\n": ":3: port: 99999 is out of range",
            "[Relay]\nhost = h\nverify = maybe\n": ":3: verify: 'maybe' is not a boolean",
            "[Relay]\nhost = h\nrate_limit = lots\n": ":3: rate_limit: 'lots' is not a rate",
        }
        for text, expected in cases.items():
            message = self.error(text if "[Relay]" in text else text + MINIMAL)
            self.assertIn(expected, message)

    def test_structure_errors(self) -> None:
        self.assertIn("no [Relay] section", self.error("[Queue]\n"))
        self.assertIn(":1: [Relay] needs a host", self.error("[Relay]\nport = 25\n"))
        self.assertIn(
            ":3: key 'host' appears twice (first at line 2)",
            self.error("[Relay]\nhost = a\nhost = b\n"),
        )
        self.assertIn(":1: key outside any [Section]", self.error("host = a\n"))
        self.assertIn(":2: expected 'key = value'", self.error("[Relay]\nhost\n"))
        self.assertIn(
            "name each: [Relay:NAME]", self.error("[Relay]\nhost = a\n[Relay:b]\nhost = b\n")
        )
        self.assertIn(
            "max_retry_delay is shorter than retry_delay",
            self.error("[Queue]\nretry_delay = 1h\nmax_retry_delay = 1m\n" + MINIMAL),
        )

    def test_the_postgresql_keys(self) -> None:
        self.assertIn(
            ":2: backend = postgresql needs dsn or dsn_file",
            self.error("[Queue]\nbackend = postgresql\n" + MINIMAL),
        )
        self.assertIn(
            ":2: dsn is only for backend = postgresql",
            self.error("[Queue]\ndsn = postgresql://db/mail\n" + MINIMAL),
        )
        config = parse_config(
            "[Queue]\nbackend = postgresql\ndsn = postgresql://db/mail\nnode = mx1\n" + MINIMAL,
            "/etc/smtpmailer/smtpmailer.conf",
        )
        self.assertEqual(
            (config.queue.dsn, config.queue.node, config.queue.lease_timeout),
            ("postgresql://db/mail", "mx1", 60.0),
        )
        self.assertEqual(config.queue.where, "postgresql (node mx1)")
        from smtpmailer.config import render_config

        self.assertIn("dsn = <redacted>\n", render_config(config))

    def test_inline_comments(self) -> None:
        config = parse_config("[Relay]\nhost = smtp.example.com   ; the smarthost\n", "c")
        self.assertEqual(config.relays[0].host, "smtp.example.com")

    def test_several_relays_sorted_by_priority(self) -> None:
        text = (
            "[Relay:backup]\nhost = b.example\npriority = 10\n"
            "[Relay:main]\nhost = a.example\npriority = 1\n"
        )
        config = parse_config(text, "c")
        self.assertEqual([r.name for r in config.relays], ["main", "backup"])

    def test_relative_paths_follow_the_config_file(self) -> None:
        text = "[Daemon]\nstate_dir = ../var\n[Relay]\ntransport = maildir\npath = ../var/md\n"
        config = parse_config(text, "/srv/app/conf/smtpmailer.conf")
        self.assertEqual(config.daemon.state_dir, "/srv/app/var")
        self.assertEqual(config.relays[0].path, "/srv/app/var/md")


class SecretTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)

    def write(self, name: str, text: str, mode: int = 0o600) -> str:
        path = os.path.join(self.dir, name)
        with open(path, "w") as handle:
            handle.write(text)
        os.chmod(path, mode)
        return path

    def test_password_file_is_read_and_redacted(self) -> None:
        secret = self.write("pw", "hunter2\n")
        path = self.write("c.conf", f"[Relay]\nhost = h\nusername = u\npassword_file = {secret}\n")
        config = load_config(path)
        self.assertEqual(config.relays[0].password, "hunter2")
        rendered = render_config(config)
        self.assertNotIn("hunter2", rendered)
        self.assertIn("password = <redacted>", rendered)
        self.assertNotIn("hunter2", repr(config))
        self.assertEqual(config.warnings, ())

    def test_password_env(self) -> None:
        os.environ["SMTPMAILER_TEST_PW"] = "from-env"
        self.addCleanup(os.environ.pop, "SMTPMAILER_TEST_PW")
        path = self.write(
            "c.conf", "[Relay]\nhost = h\nusername = u\npassword_env = SMTPMAILER_TEST_PW\n"
        )
        self.assertEqual(load_config(path).relays[0].password, "from-env")
        path = self.write("d.conf", "[Relay]\nhost = h\nusername = u\npassword_env = NOPE_X\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn(
            "d.conf:4: password_env: environment variable NOPE_X is not set", str(caught.exception)
        )

    def test_http_proxy(self) -> None:
        """A URL with its password is a secret: from the file, a file or the environment,
        redacted when shown; a malformed one is refused naming its line, not its password."""
        secret = self.write("proxy", "http://user:pr0xy-pw@proxy.example:3128\n")
        path = self.write("c.conf", f"[Daemon]\nhttp_proxy_file = {secret}\n[Relay]\nhost = h\n")
        config = load_config(path)
        self.assertEqual(config.daemon.http_proxy, "http://user:pr0xy-pw@proxy.example:3128")
        self.assertEqual(config.daemon.no_proxy, ("localhost", "127.0.0.1", "::1"))
        rendered = render_config(config)
        self.assertIn("http_proxy = <redacted>", rendered)
        self.assertNotIn("pr0xy-pw", rendered + repr(config))
        for value, line in (
            ("https://user:pr0xy-pw@proxy.example:3128", "c.conf:2: http_proxy: must be"),
            ("proxy.example:3128", "c.conf:2: http_proxy: must be http://"),
            ("http://proxy.example", "c.conf:2: http_proxy: must be http://"),
        ):
            path = self.write("c.conf", f"[Daemon]\nhttp_proxy = {value}\n[Relay]\nhost = h\n")
            with self.assertRaises(ConfigError) as caught:
                load_config(path)
            self.assertIn(line, str(caught.exception))
            self.assertNotIn("pr0xy-pw", str(caught.exception))

    def test_client_certificate(self) -> None:
        """cert_file and key_file are read when the config is: a wrong file is a config
        error naming its line, not a TLS failure at the first delivery."""
        from tests.certs import TestCA

        ca = TestCA(os.path.join(self.dir, "ca"))
        cert, key = ca.issue("client", dns=("client.example",))
        other_cert, other_key = ca.issue("other", dns=("other.example",))
        os.chmod(key, 0o600)
        relay = "[Relay]\nhost = h\nusername = u\npassword = p\n"
        config = load_config(
            self.write("c.conf", relay + f"cert_file = {cert}\nkey_file = {key}\n")
        )
        self.assertEqual((config.relays[0].cert_file, config.relays[0].key_file), (cert, key))
        self.assertEqual(config.warnings, ())
        both = self.write("both.pem", open(cert).read() + open(key).read())
        self.assertIsNone(
            load_config(self.write("c.conf", relay + f"cert_file = {both}\n")).relays[0].key_file
        )
        for extra, said in (
            (f"cert_file = {cert}\nkey_file = {other_key}\n",
             f"c.conf:5: cert_file {cert}: the certificate is not for that key"),
            (f"cert_file = {cert}\n", f"c.conf:5: cert_file {cert} holds no PEM private key"),
            (f"cert_file = {key}\nkey_file = {key}\n",
             f"c.conf:5: cert_file {key} holds no PEM certificate"),
            (f"cert_file = {cert}\nkey_file = {cert}\n",
             f"c.conf:6: key_file {cert} holds no PEM private key"),
            (f"cert_file = {self.dir}/nope.pem\n",
             f"c.conf:5: cert_file: cannot read {self.dir}/nope.pem: No such file"),
            (f"key_file = {key}\n", "c.conf:5: key_file needs cert_file"),
            (f"security = none\ncert_file = {cert}\n", "c.conf:6: cert_file needs TLS"),
        ):  # fmt: skip
            with self.assertRaises(ConfigError) as caught:
                load_config(self.write("c.conf", relay + extra))
            self.assertIn(said, str(caught.exception))
        os.chmod(other_key, 0o644)
        (warning,) = load_config(
            self.write("c.conf", relay + f"cert_file = {other_cert}\nkey_file = {other_key}\n")
        ).warnings
        self.assertIn(
            f"{other_key}: the client certificate's private key is world-readable", warning
        )

    def test_source_address(self) -> None:
        relay = "[Relay]\nhost = h\n"
        for given, kept in (("192.0.2.10", "192.0.2.10"), ("[2001:db8::1]", "2001:db8::1")):
            config = load_config(self.write("c.conf", relay + f"source_address = {given}\n"))
            self.assertEqual(config.relays[0].source_address, kept)
        with self.assertRaises(ConfigError) as caught:
            load_config(self.write("c.conf", relay + "source_address = mail.example.com\n"))
        self.assertIn(
            "c.conf:3: source_address: 'mail.example.com' is not an IP address",
            str(caught.exception),
        )

    def test_world_readable_secrets_are_warned_about(self) -> None:
        path = self.write("c.conf", "[Relay]\nhost = h\nusername = u\npassword = pw\n", 0o644)
        (warning,) = load_config(path).warnings
        self.assertIn("c.conf:4: the file holds a password and is world-readable", warning)
        self.assertNotIn("pw\n", warning)

    def test_missing_password_file(self) -> None:
        path = self.write("c.conf", "[Relay]\nhost = h\nusername = u\npassword_file = nope\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn("c.conf:4: password_file: cannot read", str(caught.exception))

    def test_auth_needs_credentials(self) -> None:
        path = self.write("c.conf", "[Relay]\nhost = h\nauth = plain\n")
        with self.assertRaises(ConfigError) as caught:
            load_config(path)
        self.assertIn("auth = plain needs username and a password", str(caught.exception))

    def test_missing_and_unreadable_files(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            load_config(os.path.join(self.dir, "absent.conf"))
        self.assertIn("absent.conf: no such config file", str(caught.exception))


class ShippedConfigTests(SynchronousTestCase):
    """The configs in conf/ stay valid: the example (with its password file supplied) and
    the one `make run` uses."""

    def test_example_config(self) -> None:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        directory = os.path.abspath(self.mktemp())
        os.makedirs(directory)
        secret = os.path.join(directory, "relay-password")
        with open(secret, "w") as handle:
            handle.write("pw\n")
        os.chmod(secret, 0o600)
        with open(os.path.join(repo, "conf", "smtpmailer.conf")) as handle:
            text = handle.read().replace("/etc/smtpmailer/relay-password", secret)
        config = parse_config(text, os.path.join(directory, "smtpmailer.conf"))
        self.assertEqual(config.relays[0].host, "smtp.example.com")
        self.assertEqual(config.relays[0].password, "pw")

    def test_example_config_names_every_key(self) -> None:
        """conf/smtpmailer.conf explains every key the code declares, in its section
        (commented out where it has no example value), and no key the code does not know."""
        from smtpmailer.config.sections import SECTIONS, section_schema

        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        found: dict[str, set[str]] = {}
        section = None
        with open(os.path.join(repo, "conf", "smtpmailer.conf")) as handle:
            for line in handle:
                line = line.strip().lstrip(";")
                if line.startswith("[") and line.endswith("]"):
                    section = line[1:-1].split(":")[0]
                elif section and " =" in line and line.split(" =")[0].isidentifier():
                    found.setdefault(section, set()).add(line.split(" =")[0])
        for name in SECTIONS:
            self.assertEqual(found.get(name, set()), set(section_schema(name)), name)

    def test_local_config(self) -> None:
        repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        config = load_config(os.path.join(repo, "conf", "local.conf"))
        self.assertEqual(config.daemon.state_dir, os.path.join(repo, "var"))
        self.assertEqual(config.relays[0].kind, "maildir")


class OAuth2ConfigTests(SynchronousTestCase):
    """[OAuth2:NAME] and a relay's oauth2 key: defaults from the provider, and every
    mistake an error at FILE:LINE."""

    def setUp(self) -> None:
        self.dir = os.path.abspath(self.mktemp())
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "smtpmailer.conf")
        self.refresh = os.path.join(self.dir, "refresh-token")
        with open(self.refresh, "w") as handle:
            handle.write("1//refresh\n")
        os.chmod(self.refresh, 0o600)

    def text(self, oauth2: str = "", relay: str = "") -> str:
        return (
            f"[OAuth2:gmail]\nclient_id = c\nrefresh_token_file = {self.refresh}\n{oauth2}"
            "[Relay]\nhost = smtp.gmail.com\nusername = me@example.com\n"
            + (relay or "auth = xoauth2\noauth2 = gmail\n")
        )

    def error(self, text: str) -> str:
        with self.assertRaises(ConfigError) as caught:
            parse_config(text, self.path)
        return str(caught.exception)

    def test_google_defaults(self) -> None:
        config = parse_config(self.text(), self.path)
        (oauth2,) = config.oauth2
        self.assertEqual(oauth2.token_url, "https://oauth2.googleapis.com/token")
        self.assertEqual(oauth2.scope, "https://mail.google.com/")
        self.assertEqual(oauth2.refresh_before, 600)
        self.assertEqual(config.relays[0].oauth2, "gmail")

    def test_microsoft_delegated_defaults(self) -> None:
        config = parse_config(self.text("provider = microsoft\ntenant = consumers\n"), self.path)
        (oauth2,) = config.oauth2
        self.assertEqual(
            oauth2.token_url, "https://login.microsoftonline.com/consumers/oauth2/v2.0/token"
        )
        self.assertEqual(oauth2.scope, "https://outlook.office.com/SMTP.Send offline_access")
        self.assertEqual(
            oauth2.device_url, "https://login.microsoftonline.com/consumers/oauth2/v2.0/devicecode"
        )

    def test_mistakes_name_the_line(self) -> None:
        cases = {
            self.text(relay="auth = xoauth2\n"): ":7: auth = xoauth2 needs oauth2 = NAME",
            self.text(relay="auth = xoauth2\noauth2 = gmial\n"): (
                ":8: oauth2: no [OAuth2:gmial] section (did you mean 'gmail'?) (sections: gmail)"
            ),
            self.text(relay="auth = plain\npassword = x\noauth2 = gmail\n"): (
                ":9: oauth2 is for auth = xoauth2 or oauthbearer, not plain"
            ),
            self.text(relay="auth = xoauth2\noauth2 = gmail\npassword = x\n"): (
                "give a password or oauth2, not both"
            ),
            self.text(
                "provider = generic\n"
            ): "[OAuth2:gmail] with provider = generic needs token_url",
            self.text("token_url = http://auth.example.com/token\n"): (
                ":4: token_url: 'http://auth.example.com/token' is not an https:// URL "
                "(plain http only to 127.0.0.1)"
            ),
            self.text("flow = client_credentials\n"): (
                ":4: flow = client_credentials is not offered by google "
                "(use refresh_token or service_account)"
            ),
            self.text("provider = microsoft\nflow = client_credentials\nclient_secret = s\n"): (
                ":1: client_credentials needs tenant = your tenant id (or domain)"
            ),
            self.text("flow = service_account\n"): "needs service_account_file",
            self.text(
                "provider = gogle\n"
            ): "provider: 'gogle' is not one of: google, microsoft, generic",
            self.text("refresh_before = soon\n"): ":4: refresh_before:",
            "[OAuth2]\nclient_id = c\n" + MINIMAL: ":1: name each OAuth2 section: [OAuth2:NAME]",
        }
        for text, expected in cases.items():
            self.assertIn(expected, self.error(text), text)

    def test_a_section_no_relay_uses_is_a_warning(self) -> None:
        config = parse_config(self.text(relay="auth = plain\npassword = x\n"), self.path)
        self.assertIn(
            f"{self.path}:1: [OAuth2:gmail] is not used by any relay "
            "(a relay names it with oauth2 = gmail)",
            config.warnings,
        )

    def test_relay_without_username(self) -> None:
        text = self.text(relay="auth = xoauth2\noauth2 = gmail\n").replace(
            "username = me@example.com\n", ""
        )
        self.assertIn("with oauth2 needs username (the mailbox)", self.error(text))

    def test_a_missing_refresh_token_is_a_warning_with_what_to_run(self) -> None:
        os.unlink(self.refresh)
        config = parse_config(self.text(), self.path)
        self.assertIn(
            f"{self.refresh}: no refresh token yet; run: smtpmailer oauth2 authorize gmail",
            config.warnings,
        )

    def test_a_service_account_key_that_is_not_one(self) -> None:
        key = os.path.join(self.dir, "sa.json")
        for content, expected in (
            ("{not json", "is not a JSON key file"),
            ('{"type": "authorized_user"}', "is not a service account key (type)"),
            ('{"type": "service_account", "client_email": "a@b"}', "has no private_key"),
        ):
            with open(key, "w") as handle:
                handle.write(content)
            text = self.text(
                f"flow = service_account\nservice_account_file = {key}\nsubject = me@example.com\n"
            )
            self.assertIn(expected, self.error(text))

    def test_secrets_redacted_in_config_output(self) -> None:
        from smtpmailer.config import render_config

        secret = os.path.join(self.dir, "secret")
        with open(secret, "w") as handle:
            handle.write("GOCSPX-very-secret\n")
        os.chmod(secret, 0o600)
        config = parse_config(self.text(f"client_secret_file = {secret}\n"), self.path)
        self.assertEqual(config.oauth2[0].client_secret, "GOCSPX-very-secret")
        shown = render_config(config)
        self.assertIn("[OAuth2:gmail]\n", shown)
        self.assertIn("client_secret = <redacted>\n", shown)
        self.assertIn("token_url = https://oauth2.googleapis.com/token\n", shown)
        self.assertNotIn("GOCSPX", shown + repr(config))
