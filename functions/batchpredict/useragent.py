"""Who the fetcher says it is: the User-Agent of every image and robots.txt request.

Site operators key on the product token (the first word, ``batchpredict``) in their logs,
robots.txt groups and ``X-Robots-Tag: batchpredict: noai`` headers, and on the contact URL to
reach whoever runs the stack. The stack sets both (template parameters ``UserAgent`` and
``ContactUrl``); by default the User-Agent is ``batchpredict/VERSION (+CONTACT_URL)``.
"""

from __future__ import annotations

import re

from batchpredict import __version__

PRODUCT = "batchpredict"
# What a stack says until its operator names their own page (wiring warns at start).
PLACEHOLDER_CONTACT_URL = "https://github.com/OPERATOR/batchpredict"
MAX_USER_AGENT = 256
MAX_CONTACT_URL = 200

# A product token (RFC 9110 tchar), then optionally "/version" and comments, printable ASCII.
_USER_AGENT = re.compile(r"[A-Za-z0-9!#$%&'*+.^_`|~-]+(?:[/ ][ -~]*)?")
_CONTACT_URL = re.compile(r"https?://[!-~]+")


def user_agent_for(contact_url: str) -> str:
    """The default User-Agent: the project, its version and the operator's contact URL."""
    return f"{PRODUCT}/{__version__} (+{contact_url})"


DEFAULT_USER_AGENT = user_agent_for(PLACEHOLDER_CONTACT_URL)


def parse_user_agent(raw: str) -> str:
    """A User-Agent header value: printable ASCII, at most MAX_USER_AGENT characters, starting
    with a product token (what robots.txt and X-Robots-Tag name us by). ValueError otherwise."""
    if len(raw) > MAX_USER_AGENT:
        raise ValueError(f"at most {MAX_USER_AGENT} characters, got {len(raw)}")
    if not _USER_AGENT.fullmatch(raw):
        raise ValueError(
            "printable ASCII starting with a product token, e.g. 'mybot/1.0 (+https://example.com/bot)'"
        )
    return raw


def parse_contact_url(raw: str) -> str:
    if len(raw) > MAX_CONTACT_URL or not _CONTACT_URL.fullmatch(raw):
        raise ValueError(f"an http(s):// URL of printable ASCII without spaces, at most {MAX_CONTACT_URL}")
    return raw


def product_token(user_agent: str) -> str:
    """The name robots rules address us by, lower case: ``batchpredict`` of ``batchpredict/0.1 (+…)``."""
    return re.split(r"[/ ]", user_agent, maxsplit=1)[0].lower()
