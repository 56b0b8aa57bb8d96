"""Pages for laboratory staff: upload, jobs, report, cell gallery, review and sign-off.

Server-rendered (Jinja) with a little plain JavaScript for drag-and-drop,
upload progress, live job progress and review shortcuts; every form also works
without JavaScript (post, then redirect). Everything is served by the app:
no CDN, no front-end build.
"""

from api.web.routes import bp

__all__ = ["bp"]
