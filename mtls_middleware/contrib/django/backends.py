"""Django authentication backend: the user of an accepted client certificate.

``CertificateBackend`` answers only ``auth.authenticate(request, mtls_identity=identity)``, the
call :class:`~.middleware.MTLSMiddleware` makes for each accepted request. Django offers a
backend only the credentials its ``authenticate`` signature accepts, so a password login
(``username=``, ``password=``) never reaches this backend, and this backend never reaches a
password check.

The certificate was judged by the middleware (validation, revocation, the mTLS store's own user
and organisation state); this backend only finds the Django user whose ``USERNAME_FIELD`` equals
the identity's ``user_id``, and refuses inactive users (``is_active`` False). Permissions and
``get_user`` are :class:`~django.contrib.auth.backends.ModelBackend`'s.

``PasswordBackend`` is ``ModelBackend`` (username and password) for projects whose store gives
some users the ``enforce_mtls`` permission (certificate login is the only way in): list it
instead of ``ModelBackend``, and such a user's correct password is refused (``PermissionDenied``,
so no later backend is tried and ``user_login_failed`` is sent) unless the login request itself
carries that user's accepted certificate. :class:`~.middleware.MTLSMiddleware` makes a session of
such a user anonymous without the certificate whatever backend made it; this backend refuses the
login up front, instead of a login that leads nowhere.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.backends import ModelBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest

from ...errors import MTLSError
from ...identity import Identity
from . import conf
from .middleware import certificate_login_required

__all__ = ["CertificateBackend", "PasswordBackend"]


class CertificateBackend(ModelBackend):
    """Authenticates the Django user named by a certificate identity's ``user_id``.

    ``create_unknown_user`` (default False): create a Django user (with an unusable password)
    for an identity that names none yet; subclass to switch it on, and override
    :meth:`configure_user` to fill in the new user. :meth:`username_for` maps an identity to a
    username (default: ``identity.user_id``).
    """

    create_unknown_user = False

    def authenticate(  # its own keyword only: Django never offers it a password
        self, request: HttpRequest | None, *, mtls_identity: Identity | None = None
    ) -> Any:
        """The active user of ``mtls_identity``, or None (no identity, no such user, inactive)."""
        if not isinstance(mtls_identity, Identity):
            return None
        username = self.username_for(mtls_identity)
        if not username:
            return None
        model = get_user_model()
        if self.create_unknown_user:
            user, created = model._default_manager.get_or_create(**{model.USERNAME_FIELD: username})
            if created:
                user.set_unusable_password()
                user = self.configure_user(request, user, mtls_identity)
        else:
            try:
                user = model._default_manager.get_by_natural_key(username)
            except model.DoesNotExist:
                return None
        return user if self.user_can_authenticate(user) else None

    def username_for(self, identity: Identity) -> str:
        """The Django username (``USERNAME_FIELD`` value) of ``identity``."""
        return identity.user_id

    def configure_user(self, request: HttpRequest | None, user: Any, identity: Identity) -> Any:
        """Fill in a user just created for ``identity`` (with ``create_unknown_user``); save it and
        return it. The default saves the unusable password only."""
        user.save()
        return user


class PasswordBackend(ModelBackend):
    """``ModelBackend``, refusing the password of a user who must log in by certificate.

    A user whose username names a store user with the ``enforce_mtls`` permission is refused
    unless ``request.mtls_identity`` (set by :class:`~.middleware.MTLSMiddleware` on a path it
    authenticates) is that user's certificate identity; so is everyone when the store cannot
    answer (fail closed). Other users, and users unknown to the store, log in as with
    ``ModelBackend``.
    """

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> Any:
        """The user of a correct ``username`` and ``password``, or None (as ``ModelBackend``).

        Raises:
            PermissionDenied: the password is correct, but the user must log in by certificate;
                Django's ``authenticate`` then returns None without trying later backends.
        """
        user = super().authenticate(request, username=username, password=password, **kwargs)
        if user is None:
            return None
        identity = getattr(request, "mtls_identity", None) if request is not None else None
        try:
            store = conf.get_authenticator().store
        except MTLSError:  # settings that cannot work: the middleware refuses every request too
            raise PermissionDenied from None
        if certificate_login_required(store, user, identity if isinstance(identity, Identity) else None):
            raise PermissionDenied
        return user
