"""What the endpoints accept and return, and how a request body becomes a validated request.

Every task endpoint takes its fields either as ``multipart/form-data`` (images as file uploads, a list
field repeated once per value) or as ``application/json`` (images as base64 strings, a ``data:`` URL
prefix allowed). Both go through the same pydantic model, so both get the same checks and the same
error messages. The OpenAPI schema of each endpoint lists both bodies, derived from that model.
"""

from __future__ import annotations

import base64
import binascii
import functools
import io
import json
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Annotated, Any, Literal, TypeVar

from PIL import Image
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    WithJsonSchema,
)
from starlette.datastructures import UploadFile
from starlette.requests import Request

from .errors import APIError, shown

MAX_TEXT_CHARS = 512  # the model reads 40 tokens; longer texts are a mistake or an attack
MAX_TOP_K = 100
MAX_RANK_IMAGES = 16  # rank runs images x texts forward passes
MAX_RANK_TEXTS = 16
_BASE64_SCHEMA = {"type": "string", "contentEncoding": "base64"}
_UPLOAD_SCHEMA = {"type": "string", "format": "binary"}


# ----------------------------------------------------------------------------- field types


def _decode_base64(value: Any) -> Any:
    """JSON carries images as base64 text (optionally a ``data:...;base64,`` URL); uploads arrive as bytes."""
    if not isinstance(value, str):
        return value
    payload = value.split(",", 1)[1] if value.startswith("data:") and "," in value else value
    try:
        return base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(
            "is not base64; send the image file base64-encoded, or upload it as multipart"
        ) from None


def _check_text(text: str) -> str:
    if not text.strip():
        raise ValueError("is blank; send some words")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("is not valid unicode (it holds a lone surrogate); send UTF-8 text") from None
    return text


ImageData = Annotated[bytes, BeforeValidator(_decode_base64), WithJsonSchema(_BASE64_SCHEMA)]
Text = Annotated[str, Field(min_length=1, max_length=MAX_TEXT_CHARS), AfterValidator(_check_text)]


# ----------------------------------------------------------------------------- requests


def _example_image() -> str:
    """A 32x32 red square as base64 PNG, the image of the JSON examples (so the docs' "Try it out" runs)."""
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (220, 30, 30)).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


EXAMPLE_IMAGE = _example_image()


def _config(**example: Any) -> ConfigDict:
    """Request models refuse unknown fields (a request never names a file or a model) and show an example."""
    return ConfigDict(extra="forbid", json_schema_extra={"examples": [example]})


class VQARequest(BaseModel):
    """A question about an image."""

    model_config = _config(image=EXAMPLE_IMAGE, question="What color is the shape?", top_k=5)
    image: ImageData = Field(description="the image (an upload, or base64 in JSON)")
    question: Text = Field(description="the question, e.g. 'What color is the shape?'")
    top_k: int = Field(5, ge=1, le=MAX_TOP_K, description="how many answers to return, best first")


class ExplainRequest(BaseModel):
    """A question (or caption) to explain: where the model looks for each of its words."""

    model_config = _config(image=EXAMPLE_IMAGE, question="What color is the shape?", method="rollout")
    image: ImageData = Field(description="the image (an upload, or base64 in JSON)")
    question: Text = Field(description="the text whose words are mapped onto the image")
    method: Literal["rollout", "ipot"] = Field(
        "rollout",
        description="attention 'rollout' (finds the shape on the bundled model) or 'ipot' alignment",
    )


class NLVR2Request(BaseModel):
    """A statement to check against a pair of images."""

    model_config = _config(images=[EXAMPLE_IMAGE, EXAMPLE_IMAGE], statement="Both images are red.")
    images: list[ImageData] = Field(min_length=2, max_length=2, description="the left and right images")
    statement: Text = Field(description="the statement, e.g. 'The left image has two dogs.'")


class RankRequest(BaseModel):
    """Images and texts to score against each other."""

    model_config = _config(images=[EXAMPLE_IMAGE], texts=["a red square", "a blue circle"])
    images: list[ImageData] = Field(min_length=1, max_length=MAX_RANK_IMAGES, description="N images")
    texts: list[Text] = Field(min_length=1, max_length=MAX_RANK_TEXTS, description="M texts")


class FillMaskRequest(BaseModel):
    """A text with [MASK] words to fill in from the image."""

    model_config = _config(image=EXAMPLE_IMAGE, text="a [MASK] square")
    image: ImageData = Field(description="the image (an upload, or base64 in JSON)")
    text: Text = Field(description="the text with one or more [MASK], e.g. 'a [MASK] circle'")


# ----------------------------------------------------------------------------- responses


class Answer(BaseModel):
    answer: str
    score: float = Field(description="sigmoid probability")


class VQAResponse(BaseModel):
    answers: list[Answer] = Field(description="best first")


class ExplainResponse(BaseModel):
    words: list[str] = Field(description="the words of the question")
    heatmaps: list[str] = Field(description="one transparent PNG overlay per word, as a data: URL")
    width: int
    height: int
    method: str


class NLVR2Response(BaseModel):
    label: bool = Field(description="whether the statement is true of the image pair")
    score: float = Field(description="the probability of that label")


class RankResponse(BaseModel):
    scores: list[list[float]] = Field(description="N x M scores, higher = better match")


class FillMaskResponse(BaseModel):
    sequence: str
    tokens: list[str]
    scores: list[float]


class ErrorResponse(BaseModel):
    error: str = Field(description="what was wrong and how to fix it")


class ModelCard(BaseModel):
    name: str = Field(description="the model's name, from its config's model_card, else how it was loaded")
    architecture: str = Field(description="the model class, e.g. ViltForQuestionAnswering")
    task: str = Field(description="what the model does")
    answers: int | None = Field(description="how many answers a question-answering model chooses from")
    description: str | None = Field(description="what the model knows, from its config's model_card")


# ----------------------------------------------------------------------------- reading a body

RequestT = TypeVar("RequestT", bound=BaseModel)
MAX_ERRORS_SHOWN = 5  # a body with more wrong fields gets the first ones and a count
JSON_SEPARATORS = b",:[{"  # each value, key and container of a JSON text needs one of these


@dataclass(frozen=True)
class BodyShape:
    """What the largest valid body of a request model holds, to refuse a larger one before parsing it.

    Attributes:
        fields: the field names.
        list_fields: the fields that hold lists (a form field repeated once per value).
        values: the most values of all fields together (a list field counts its longest length).
        images: the most of those that are images (multipart file uploads).
        separators: the most commas, colons, brackets and braces of its JSON text: two per value (its
            key's colon or its list's comma, and a data URL's colon and comma), the braces and brackets,
            and every character of its texts, which may all be separators.
    """

    fields: frozenset[str]
    list_fields: frozenset[str]
    values: int
    images: int
    separators: int


@functools.cache
def body_shape(model: type[BaseModel]) -> BodyShape:
    """The :class:`BodyShape` of a request model, from its JSON schema."""
    properties = model.model_json_schema()["properties"]
    values = images = 0
    separators = 2  # the braces
    for prop in properties.values():
        count = prop.get("maxItems", 1)
        item = prop.get("items", prop)
        values += count
        images += count if item.get("contentEncoding") == "base64" else 0
        separators += 2 + 2 * count + count * item.get("maxLength", 0)
    lists = frozenset(name for name, prop in properties.items() if prop.get("type") == "array")
    return BodyShape(frozenset(properties), lists, values, images, separators)


def _as_upload(prop: dict[str, Any]) -> dict[str, Any]:
    """A property of the JSON body's schema as the multipart body has it: base64 images become files."""
    if prop.get("contentEncoding") == "base64":
        return {**{key: value for key, value in prop.items() if key != "contentEncoding"}, **_UPLOAD_SCHEMA}
    if "items" in prop:
        return {**prop, "items": _as_upload(prop["items"])}
    return prop


def request_body_openapi(model: type[BaseModel]) -> dict[str, Any]:
    """The ``requestBody`` of an endpoint taking ``model`` as multipart (images as uploads) or as JSON."""
    json_schema = model.model_json_schema()
    form_schema = {
        **json_schema,
        "properties": {k: _as_upload(v) for k, v in json_schema["properties"].items()},
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "multipart/form-data": {"schema": form_schema},
                "application/json": {"schema": json_schema},
            },
        }
    }


async def read_request(request: Request, model: type[RequestT]) -> RequestT:
    """Parse and validate a multipart or JSON body into ``model``, refusing early what it cannot hold.

    A form may have no more parts than the model has values (and files than it has images); a JSON text
    no more separators than the model's largest body (:class:`BodyShape`), checked before it is parsed;
    neither may name a field the model lacks. No error message repeats more than a few short pieces of
    the body.

    Raises:
        APIError: 415 for another content type, 400 for a body that cannot be parsed or holds more than
            the model takes, 422 naming each field that is unknown, missing, of the wrong type or out of
            range.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    shape = body_shape(model)
    if content_type in ("multipart/form-data", "application/x-www-form-urlencoded"):
        data = await _form_fields(request, shape)
    elif content_type == "application/json":
        data = _parse_json(b"".join([chunk async for chunk in request.stream()]), shape)
    else:
        raise APIError(
            415,
            f"unsupported content type {shown(content_type or '(none)')}; send multipart/form-data or "
            "application/json",
        )
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise APIError(422, describe_validation_errors(err.errors())) from None


def _parse_json(body: bytes, shape: BodyShape) -> Any:
    """The JSON value of a body, or a 400 saying why it is not one (more separators than the model's
    largest body, a key given twice, bad syntax or encoding, nesting too deep for the parser, an integer
    with more digits than Python converts). The separators are counted before anything is parsed, so a
    body of a million keys costs a few passes over its bytes, not a million objects."""
    separators = sum(body.count(bytes([char])) for char in JSON_SEPARATORS)
    if separators > shape.separators:
        raise APIError(
            400,
            f"the JSON body holds more values than this endpoint takes ({separators} separators, at most "
            f"{shape.separators}); send one object of the fields {_names(shape.fields)}",
        )
    try:
        data = json.loads(body, object_pairs_hook=_no_repeated_keys)
    except RecursionError:
        raise APIError(400, "the JSON body is nested too deeply; send a flat object of the fields") from None
    except ValueError as err:  # JSONDecodeError, UnicodeDecodeError, int() of too many digits
        raise APIError(400, f"the body is not valid JSON ({_first_line(err)})") from None
    if isinstance(data, dict):
        _known_fields(data.keys(), shape)
    return data


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data = dict(pairs)
    if len(data) < len(pairs):
        repeated = next(key for key, count in Counter(key for key, _ in pairs).items() if count > 1)
        raise APIError(400, f"the JSON body names {shown(repeated)} more than once; send each field once")
    return data


def _known_fields(names: Iterable[str], shape: BodyShape) -> None:
    """A 422 naming (some of) the fields the model does not have, if any."""
    unknown = [name for name in names if name not in shape.fields]
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise APIError(
            422,
            f"unknown field(s) {', '.join(shown(name) for name in unknown[:3])}{more}; this endpoint takes "
            f"{_names(shape.fields)}",
        )


def _names(fields: frozenset[str]) -> str:
    return ", ".join(sorted(fields))


def _first_line(err: Exception) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


async def _form_fields(request: Request, shape: BodyShape) -> dict[str, Any]:
    """The form's fields: uploads as bytes, repeated fields as lists. Parsing stops at the first part
    past the model's values or images (400); unknown names are refused before any upload is read."""
    form = await request.form(max_files=shape.images, max_fields=shape.values)
    _known_fields(form.keys(), shape)
    data: dict[str, Any] = {}
    for name in set(form.keys()):
        values = [
            await value.read() if isinstance(value, UploadFile) else value for value in form.getlist(name)
        ]
        data[name] = values if name in shape.list_fields or len(values) > 1 else values[0]
    return data


def describe_validation_errors(errors: list[Any]) -> str:
    """One line naming each invalid field and what is wrong with it (pydantic's or FastAPI's errors): the
    first :data:`MAX_ERRORS_SHOWN`, and how many more; field names shortened as :func:`shown` does."""
    parts = []
    for error in errors[:MAX_ERRORS_SHOWN]:
        location = ".".join(_location(part) for part in error["loc"] if part != "body") or "body"
        message = str(error["msg"]).removeprefix("Value error, ")
        parts.append(f"'{location}' {message[0].lower()}{message[1:]}" if location != "body" else message)
    if len(errors) > MAX_ERRORS_SHOWN:
        parts.append(f"and {len(errors) - MAX_ERRORS_SHOWN} more errors")
    return "; ".join(parts)


def _location(part: Any) -> str:
    return shown(part)[1:-1] if isinstance(part, str) else str(part)
