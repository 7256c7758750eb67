"""Renders a rule's message template (subject + body) from its variables, strictly and sandboxed.

Delimiters are `[[ var ]]`, `[% block %]` and `[# comment #]` because dbt renders `{{ }}` inside the
rule YAML that holds the templates. A variable the template needs but the action lacks is an error,
never an empty string in a customer's inbox.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping

import jinja2
from jinja2 import meta
from jinja2.sandbox import SandboxedEnvironment

from action_sinks.base import single_line


class TemplateError(ValueError):
    """A template cannot be rendered; the message names the part (subject/body) and the variable."""


def _environment(html: bool = False) -> SandboxedEnvironment:
    return SandboxedEnvironment(
        variable_start_string="[[",
        variable_end_string="]]",
        block_start_string="[%",
        block_end_string="%]",
        comment_start_string="[#",
        comment_end_string="#]",
        undefined=jinja2.StrictUndefined,
        # plain text: HTML escaping would turn "O'Brien & Co" into entities; an HTML body escapes every
        # variable, so a record's text can never inject markup or script into the message
        autoescape=html,
        keep_trailing_newline=True,
    )


_ENV = _environment()
_HTML_ENV = _environment(html=True)
FORMATS = ("text", "html")


@functools.lru_cache(maxsize=256)
def _compiled(
    part: str, source: str, env: SandboxedEnvironment
) -> tuple[jinja2.Template, frozenset[str], dict[str, object]]:
    """A template compiled once per source (a pass renders the same rule template for every candidate, and
    compiling costs a hundred times the render), with the variables it needs and its globals as a dict."""
    try:
        parsed = env.parse(source)
    except jinja2.TemplateSyntaxError as exc:
        raise TemplateError(
            f"message {part} template has a syntax error on line {exc.lineno}: {exc.message}"
        ) from exc
    needed = frozenset(meta.find_undeclared_variables(parsed))
    template = env.from_string(source)
    return template, needed, dict(template.globals)


def _render(part: str, source: str, variables: Mapping[str, object], env: SandboxedEnvironment = _ENV) -> str:
    template, needed, template_globals = _compiled(part, source, env)
    missing = sorted(needed - set(variables))
    if missing:
        available = ", ".join(sorted(variables)) or "none"
        raise TemplateError(
            f"message {part} template uses undefined variable(s) {', '.join(missing)} "
            f"(available: {available})"
        )
    # what Template.render does, with the globals copied once per template instead of once per render (the
    # copy of jinja's globals mapping is most of a short template's render time)
    context = template.new_context({**template_globals, **variables}, shared=True)
    try:
        return template.environment.concat(template.root_render_func(context))  # type: ignore[attr-defined]
    except jinja2.UndefinedError as exc:
        # an attribute or key of a given variable is missing, e.g. [[ deal.name ]] without name
        raise TemplateError(f"message {part} template: {exc.message}") from exc
    except jinja2.TemplateError as exc:
        raise TemplateError(f"message {part} template could not be rendered: {exc}") from exc


def render_message(
    template_subject: str, template_body: str, variables: Mapping[str, object], body_format: str = "text"
) -> tuple[str, str]:
    """Render (subject, body). The subject is one line: CR/LF become spaces, so it is header-safe.
    `body_format="html"` renders the body with autoescaping (the subject is never HTML)."""
    if body_format not in FORMATS:
        raise TemplateError(f"message body format {body_format!r} is not one of {', '.join(FORMATS)}")
    subject = _render("subject", template_subject or "", variables)
    body = _render("body", template_body or "", variables, _HTML_ENV if body_format == "html" else _ENV)
    return single_line(subject), body
