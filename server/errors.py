"""The domain errors of framehub, each with the HTTP status it maps to.

Code below the handlers (``store``, ``media``) raises these; ``server.web.middleware`` turns them into a
JSON answer ``{"error": message}`` with ``status`` in one place, so handlers stay thin.
"""

from __future__ import annotations


class FramehubError(Exception):
    """Base of every error a client can cause; ``str(error)`` is shown to the client."""

    status = 400


class InvalidRepositoryName(FramehubError):
    """A repository name outside ``[A-Za-z0-9][A-Za-z0-9._-]{0,63}``."""

    status = 400


class RepositoryNotFound(FramehubError):
    """No such folder, and no source to download it from."""

    status = 404


class FrameNotFound(FramehubError):
    """A frame index outside the repository."""

    status = 404


class ArchiveRejected(FramehubError):
    """A downloaded archive that breaks a rule (path escape, link, budget, truncation)."""

    status = 422


class DownloadFailed(FramehubError):
    """The source could not deliver a repository archive."""

    status = 502


class InvalidParameter(FramehubError):
    """A query parameter with a value outside what is allowed."""

    status = 400


class FrameRejected(FramehubError):
    """A live frame that is not an image we take, or is too large."""

    status = 400


class Unauthorized(FramehubError):
    """A request without the configured ``[server] api_token``."""

    status = 401


class PayloadTooLarge(FramehubError):
    """A request body over the limit of its route."""

    status = 413


class UnsupportedUpload(FramehubError):
    """A batch upload that is neither multipart/form-data nor a raw ``video/*`` body."""

    status = 415


class VideoRejected(FramehubError):
    """An uploaded file that is not a video framehub takes, or breaks a ``[batch]`` limit."""

    status = 422


class InsufficientStorage(FramehubError):
    """No disk space left for an upload."""

    status = 507


class JobNotFound(FramehubError):
    """A batch job id that is unknown, or whose result is no longer kept."""

    status = 404


class BatchUnavailable(FramehubError):
    """The batch queue is full, the server is stopping, or a job was stopped with it."""

    status = 503


class MalformedBody(FramehubError):
    """A body that does not parse as its Content-Type says."""

    status = 400


class MissingUpload(FramehubError):
    """A multipart body without the file field its route reads."""

    status = 400


class UploadIncomplete(FramehubError):
    """A body that ended (the client went away) before all of it arrived."""

    status = 400


class BodyStalled(FramehubError):
    """A request body that stopped flowing for ``[server] body_idle_timeout``."""

    status = 408


class UnknownProcessor(FramehubError):
    """A processor name that is not configured."""

    status = 400


class ClipUnreadable(FramehubError):
    """Bytes sent for analysis that are not a video we can decode."""

    status = 422


class SessionRefused(FramehubError):
    """A connection whose session id is unknown, expired or already in use."""

    status = 401


class TooManyPendingSessions(FramehubError):
    """The cap on handed-out but unused session ids is reached."""

    status = 503


class ServerStopping(FramehubError):
    """A request for new work (a session id) while the server is stopping."""

    status = 503


class InvalidCameraName(FramehubError):
    """A camera name outside the repository name rule."""

    status = 400


class CameraNotFound(FramehubError):
    """No live camera of that name, online or recently offline; or no result of it yet."""

    status = 404


class CameraTaken(FramehubError):
    """A camera name used by a live session, with ``[live] takeover = false``."""

    status = 409


class RecordingRefused(FramehubError):
    """A recording whose repository folder already holds an unrelated repository."""

    status = 409


class TooManyViewers(FramehubError):
    """A camera already streamed to ``[live] max_viewers`` viewers."""

    status = 503


class TooManyConnections(FramehubError):
    """A client behind a trusted proxy has ``[server] max_connections_per_ip`` requests open."""

    status = 503


class UiAssetsMissing(FramehubError):
    """The pages' socket.io-client, installed by npm into ``server/ui/node_modules``, is missing."""

    status = 503


class ClusterUnavailable(FramehubError):
    """Redis, which a cluster feature needs, does not answer."""

    status = 503
