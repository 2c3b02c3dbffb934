# smtpmailer: `make run` starts the daemon on a local default, `make test` runs every check.
# Both bootstrap their own virtualenv on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The working tree is imported through PYTHONPATH, which is also how Twisted finds
# twisted/plugins/ in our flat layout (an installed copy is tested separately).
export PYTHONPATH := $(CURDIR)
DEPS_STAMP := $(VENV)/.deps-$(shell cat setup.cfg pyproject.toml 2>/dev/null | cksum | cut -d' ' -f1)

.PHONY: run test check lint typecheck unit deps system-deps chaos clean install uninstall man news

# Debian packages the tests use, as tool:package: systemd-analyze (the unit file check),
# the OpenSSH client (the manhole), Chromium and its chromedriver (the dashboard, driven
# by selenium), swaks (an SMTP client),
# Postfix (smtp-sink and smtp-source for the benchmarks), nginx (bench/api's HTTP sink),
# fail2ban (fail2ban-regex checks the shipped filter against a real log), promtool (the
# alert rules), man and groff (the man pages render without warnings), zsh (its completion
# script parses); and PostgreSQL when none answers on 127.0.0.1:5432 (the tests then start
# a throwaway cluster).
SYSTEM_TOOLS := systemd-analyze:systemd ssh:openssh-client ssh-keygen:openssh-client chromium:chromium \
	chromedriver:chromium-driver \
	swaks:swaks smtp-sink:postfix smtp-source:postfix fail2ban-regex:fail2ban \
	promtool:prometheus man:man-db groff:groff-base zsh:zsh nginx:nginx-light php:php-cli \
	tinyproxy:tinyproxy microsocks:microsocks
# Perl modules, as module=package: swaks needs Net::SSLeay for STARTTLS, and Debian only
# recommends it (we install without recommends).
PERL_MODULES := Net::SSLeay=libnet-ssleay-perl
# Files that only a package brings, as file=package: Symfony Mailer, the client that
# `sendmail -bs` is tested against.
SYSTEM_FILES := /usr/share/php/Symfony/Component/Mailer/autoload.php=php-symfony-mailer

$(DEPS_STAMP):
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python tools/requirements.py install_requires test > $(VENV)/requirements.txt
	$(BIN)/python -m pip install -q -r $(VENV)/requirements.txt
	# The commands of this checkout, so that trying it needs no PYTHONPATH and no -m.
	for command in smtpmailer:smtpmailer.cli smtpmailer-sendmail:smtpmailer.intake.sendmail.command; do \
		printf '#!/bin/sh\nPYTHONPATH="$(CURDIR)$${PYTHONPATH:+:$$PYTHONPATH}" exec "$(CURDIR)/$(BIN)/python" -m %s "$$@"\n' \
			"$${command#*:}" > $(BIN)/$${command%%:*}; \
		chmod 755 $(BIN)/$${command%%:*}; \
	done
	rm -f $(VENV)/.deps-*
	touch $@

deps: $(DEPS_STAMP)

# Installs only what is missing; `apt-get update` runs once, and only if something is.
system-deps:
	@missing=""; for pair in $(SYSTEM_TOOLS); do \
		tool=$${pair%%:*}; package=$${pair#*:}; \
		command -v $$tool >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	for pair in $(PERL_MODULES); do \
		module=$${pair%%=*}; package=$${pair#*=}; \
		perl -M$$module -e1 >/dev/null 2>&1 || missing="$$missing $$package"; \
	done; \
	for pair in $(SYSTEM_FILES); do \
		file=$${pair%%=*}; package=$${pair#*=}; \
		[ -e $$file ] || missing="$$missing $$package"; \
	done; \
	if ! bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
		missing="$$missing postgresql"; \
	fi; \
	if [ -n "$$missing" ]; then \
		echo "installing Debian packages:$$missing"; \
		SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
		$$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi

run: deps
	mkdir -p var
	$(BIN)/twistd -n --pidfile= smtpmailer --config conf/local.conf

# The bench scripts have no .py suffix, so ruff only sees them when named.
BENCH_SCRIPTS := $(filter-out %.py bench/results,$(wildcard bench/*))

lint: deps
	$(BIN)/ruff check smtpmailer tests twisted bench tools $(BENCH_SCRIPTS)
	$(BIN)/ruff format --check smtpmailer tests twisted bench tools

typecheck: deps
	$(BIN)/mypy

# Two trial workers: most tests wait on processes and sockets, so the suite takes about
# half the time (the benches that need the one Postfix take turns through a lock).
JOBS ?= 2

unit: deps system-deps
	$(BIN)/python tools/run_trial.py --jobs=$(JOBS) tests

test: lint typecheck unit

# The fault suite at full size (make test runs its tiny mode): kill -9 and SIGHUP storms,
# a full disk, a damaged queue, fuzzing, and a sweep of every output for secrets.
chaos: deps system-deps
	$(BIN)/python bench/chaos

# A server install (see README "Install"): a virtualenv at PREFIX, the unit, man pages,
# completions. DESTDIR stages it for a package; SENDMAIL_LINK=1 adds /usr/sbin/sendmail
# (and /usr/lib/sendmail, /usr/bin/mailq, /usr/bin/newaliases).
PREFIX ?= /opt/smtpmailer
DESTDIR ?=
INSTALL_ARGS = --prefix "$(PREFIX)" --destdir "$(DESTDIR)" --python "$(PYTHON)"

# Only the standard library and the new virtualenv's pip: no need for this checkout's .venv.
install:
	$(PYTHON) tools/install.py install $(INSTALL_ARGS) $(if $(filter 1,$(SENDMAIL_LINK)),--sendmail-link)

uninstall:
	$(PYTHON) tools/install.py uninstall $(INSTALL_ARGS)

# The man pages alone, into build/man (make install puts them in place).
man: deps
	$(BIN)/python tools/manpages.py build/man

# NEWS.rst from the fragments in changelog.d/ (towncrier).
news: deps
	$(BIN)/towncrier build --yes --version "$$($(BIN)/python -c 'import smtpmailer; print(smtpmailer.__version__.public())')"

clean:
	rm -rf $(VENV) _trial_temp var build
