"""TokenSource: the access token of one ``[OAuth2:NAME]``, fetched when needed and shared.

Connections ask ``token()``. A token is renewed ``refresh_before`` its expiry (never later
than half its lifetime, for endpoints that issue short ones); however many connections wait
meanwhile, one request goes to the endpoint (single flight) and all of them get its answer.
A token a server refuses is dropped (``rejected``) so the next ask fetches a new one. The
token is cached in state_dir, so a restart does not fetch needlessly; a refresh token the
provider rotates is on disk before its access token is used.

What cannot be mended by retrying (``invalid_grant``: the refresh token was revoked or has
lapsed) is asked again only once the refresh token file changes: after ``smtpmailer oauth2
authorize NAME``. Every failure defers mail, never fails it, and is ``problem`` (for
/health) until a token comes again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorTime

from smtpmailer.config.sections import OAuth2Config
from smtpmailer.logs import log
from smtpmailer.oauth2 import grants
from smtpmailer.oauth2.endpoint import Poster
from smtpmailer.oauth2.files import (
    CachedToken,
    cache_path,
    identity,
    load_cache,
    read_secret_file,
    save_cache,
    write_private,
)
from smtpmailer.queue.runner import Runner, synchronous_runner

# After a failure that retrying may mend, connections wait this long before asking again
# (a down endpoint is not asked once per connection).
RETRY_AFTER = 10.0
# An old token is still handed out while a refresh fails, if it is good this much longer.
STILL_GOOD_FOR = 60.0


class TokenError(Exception):
    """No token now. The message names the section and says what to do; ``error`` is the
    endpoint's OAuth error code or what went wrong (for metrics)."""

    def __init__(self, message: str, error: str) -> None:
        super().__init__(message)
        self.error = error


class _Unchanged(Exception):
    """The refresh token on disk is still the one refused: the last failure stands."""

    def __init__(self, failure: TokenError) -> None:
        super().__init__(str(failure))
        self.failure = failure


def _advice(config: OAuth2Config, error: str) -> str:
    if error == "invalid_grant" and config.flow == "refresh_token":
        return f"; run: smtpmailer oauth2 authorize {config.name}"
    if error in ("invalid_client", "unauthorized_client"):
        return "; check client_id and the client secret"
    if error == "invalid_grant":
        return "; check the service account's key, subject and domain-wide delegation"
    return ""


class TokenSource:
    def __init__(
        self,
        config: OAuth2Config,
        state_dir: str | None,
        clock: IReactorTime,
        post: Poster,
        blocking: Runner = synchronous_runner,
        counted: Callable[[str, str], None] = lambda section, result: None,
    ) -> None:
        self.config = config
        self._cache = cache_path(state_dir, config.name) if state_dir else None
        self._clock = clock
        self._post = post
        self._blocking = blocking
        self._counted = counted
        self._token: CachedToken | None = None
        self._cache_read = False
        self._waiters: list[Deferred[str]] = []
        self._refreshing = False
        self._failure: TokenError | None = None
        self._retry_at = 0.0
        # The refresh token the endpoint refused for good, and one rotated but not yet on
        # disk (the disk was full): the next refresh writes it first.
        self._refused: str | None = None
        self._unsaved: str | None = None
        self.problem: str | None = None
        self.refreshes = 0

    @property
    def expires_at(self) -> float | None:
        return self._token.expires_at if self._token is not None else None

    def _renew_at(self, token: CachedToken) -> float:
        return token.expires_at - min(self.config.refresh_before, token.lifetime / 2)

    def token(self) -> Deferred[str]:
        """The access token, at once when one is good, else when the refresh answers."""
        now = self._clock.seconds()
        token = self._token
        if token is not None and now < self._renew_at(token):
            return succeed(token.value)
        if self._failure is not None and now < self._retry_at:
            if token is not None and now < token.expires_at - STILL_GOOD_FOR:
                return succeed(token.value)
            return fail(self._failure)
        waiter: Deferred[str] = Deferred(canceller=self._forget)
        self._waiters.append(waiter)
        if not self._refreshing:
            self._refreshing = True
            Deferred.fromCoroutine(self._refresh()).addBoth(self._settle)
        return waiter

    def _forget(self, waiter: Deferred[str]) -> None:
        """A connection gave up waiting (cancelled): the refresh goes on for the others."""
        if waiter in self._waiters:
            self._waiters.remove(waiter)

    def rejected(self, value: str) -> None:
        """A server refused ``value`` (revoked before its expiry): the next ask refreshes.
        Connections that report a token already replaced change nothing."""
        if self._token is not None and self._token.value == value:
            self._token = None
            self._retry_at = 0.0

    # --- the refresh ---

    def _issued_for(self, refresh: str | None) -> str:
        config = self.config
        return identity(
            config.flow,
            config.token_url,
            config.client_id,
            config.scope,
            config.subject,
            identity(refresh) if refresh else None,
        )

    async def _refresh(self) -> CachedToken:
        config = self.config
        refresh = None
        if config.flow == "refresh_token":
            assert config.refresh_token_file is not None
            if self._unsaved is not None:
                await self._blocking(write_private, config.refresh_token_file, self._unsaved)
                self._unsaved = None
            refresh = await self._blocking(read_secret_file, config.refresh_token_file)
            if refresh is None:
                raise TokenError(
                    f"oauth2 {config.name}: no refresh token in {config.refresh_token_file}; "
                    f"run: smtpmailer oauth2 authorize {config.name}",
                    "no_refresh_token",
                )
            if self._refused is not None and refresh == self._refused and self._failure:
                # The same token the endpoint refused for good: not asked, not counted.
                raise _Unchanged(self._failure)
        issued_for = self._issued_for(refresh)
        if not self._cache_read and self._cache is not None:
            self._cache_read = True
            cached = await self._blocking(load_cache, self._cache, issued_for)
            if cached is not None and self._clock.seconds() < self._renew_at(cached):
                return cached
        if config.flow == "refresh_token":
            assert refresh is not None
            fields = grants.refresh_request(config, refresh)
        elif config.flow == "client_credentials":
            fields = grants.client_credentials_request(config)
        else:
            fields = grants.service_account_request(config, self._clock.seconds())
        assert config.token_url is not None
        try:
            status, body = await self._post(config.token_url, fields, config.timeout)
            grant = grants.read_answer(status, body)
        except grants.TokenEndpointError as error:
            if error.lasting:
                self._refused = refresh
            raise TokenError(
                f"oauth2 {config.name}: {error}{_advice(config, error.error)}", error.error
            ) from None
        now = self._clock.seconds()
        lifetime = max(grant.expires_in, 1.0)
        token = CachedToken(grant.access_token, now + lifetime, lifetime)
        if grant.refresh_token and grant.refresh_token != refresh:
            assert config.refresh_token_file is not None
            refresh = grant.refresh_token
            try:
                await self._blocking(write_private, config.refresh_token_file, refresh + "\n")
            except OSError as error:
                self._unsaved = refresh + "\n"
                raise TokenError(
                    f"oauth2 {config.name}: cannot write the rotated refresh token to "
                    f"{config.refresh_token_file}: {error.strerror}",
                    "write_failed",
                ) from None
        if self._cache is not None:
            try:
                await self._blocking(save_cache, self._cache, self._issued_for(refresh), token)
            except OSError as error:
                log.warn(
                    "oauth2 {name}: cannot cache the access token in {path}: {error}",
                    name=config.name,
                    path=self._cache,
                    error=error.strerror,
                )
        self.refreshes += 1
        return token

    def _settle(self, result: Any) -> None:
        self._refreshing = False
        waiters, self._waiters = self._waiters, []
        name = self.config.name
        if isinstance(result, CachedToken):
            self._token = result
            self._failure = None
            self._refused = None
            self._counted(name, "ok")
            if self.problem is not None:
                log.info("oauth2 {name}: tokens again", name=name)
                self.problem = None
            for waiter in waiters:
                waiter.callback(result.value)
            return
        error = result.value
        if isinstance(error, _Unchanged):
            for waiter in waiters:
                waiter.errback(error.failure)
            return
        if not isinstance(error, TokenError):
            log.failure("oauth2 {name}: refresh failed", failure=result, name=name)
            error = TokenError(f"oauth2 {name}: {type(error).__name__}: {error}", "internal")
        self._failure = error
        # A refused refresh token is asked again only once its file changed, which costs a
        # file read, not a request: no need to wait for that.
        again = 0.0 if self._refused is not None else RETRY_AFTER
        self._retry_at = self._clock.seconds() + again
        self._counted(name, error.error)
        if str(error) != self.problem:
            self.problem = str(error)
            log.warn("{problem}", problem=self.problem, oauth2=name)
        now = self._clock.seconds()
        token = self._token
        for waiter in waiters:
            if token is not None and now < token.expires_at - STILL_GOOD_FOR:
                waiter.callback(token.value)
            else:
                waiter.errback(error)


class TokenSources:
    """One TokenSource per ``[OAuth2:NAME]``, kept across reloads while its section is
    unchanged (with its token and any refresh under way)."""

    def __init__(self, make: Callable[[OAuth2Config], TokenSource]) -> None:
        self._make = make
        self.sources: dict[str, TokenSource] = {}

    def configure(self, sections: tuple[OAuth2Config, ...]) -> None:
        sources = {}
        for config in sections:
            source = self.sources.get(config.name)
            sources[config.name] = (
                source if source is not None and source.config == config else self._make(config)
            )
        self.sources = sources

    def get(self, name: str) -> TokenSource:
        return self.sources[name]

    def problems(self) -> list[str]:
        return [s.problem for s in self.sources.values() if s.problem is not None]
