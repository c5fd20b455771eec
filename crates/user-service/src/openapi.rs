//! The OpenAPI 3.1 document of the JSON API, generated from the code and
//! served at `GET /openapi.json` on the API's own listener (over TLS when the
//! API is).
//!
//! The operations come from the handlers in [`crate::http`]
//! (`#[utoipa::path]`, registered with their routes); this module adds what
//! the derives cannot say: the document's title, the error body's schema,
//! and the field schemas whose limits are [`crate::domain`]'s constants, so
//! the document states exactly the rules the service enforces:
//!
//! | field | schema |
//! |---|---|
//! | `user_id`, path `id` | 1 to [`MAX_ID_LEN`] of `A-Z a-z 0-9 . _ -` |
//! | `name` | trimmed: 1 to [`MAX_NAME_LEN`] characters, no control character |
//! | `age` | int32, 0 to [`MAX_AGE`] (a whole number, `30.0` too) |
//! | `email` | trimmed: empty, or `local@domain.tld` without whitespace, at most [`MAX_EMAIL_LEN`] bytes (see [`email`]) |
//! | `page_size` | int32, at least 0 (0: [`DEFAULT_PAGE_SIZE`]; larger than [`MAX_PAGE_SIZE`] is reduced to it) |
//! | `page_token` | empty, or a token this service returned |
//!
//! The patterns match what the service accepts, whitespace trimming
//! included (unit tests below check them against [`crate::domain`]), with
//! one exception JSON Schema cannot express: `email`'s limit is in UTF-8
//! bytes, `maxLength` counts characters; the document promises what surely
//! fits ([`email`]), so some long non-ASCII addresses it does not promise
//! are accepted all the same. What the document calls valid, the service
//! accepts.
//!
//! Why not also on the ops port: a document without `servers` is resolved
//! against the URL it was fetched from, so served beside the API it points
//! clients (and schemathesis) at the API, with the API's TLS.

use std::{borrow::Cow, sync::LazyLock};

use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{StatusCode, header};
use utoipa::{
    OpenApi, PartialSchema, ToSchema,
    openapi::{
        RefOr, Type,
        schema::{AnyOfBuilder, KnownFormat, Object, ObjectBuilder, Schema, SchemaFormat},
    },
};

use crate::{
    domain::{DEFAULT_PAGE_SIZE, MAX_AGE, MAX_EMAIL_LEN, MAX_ID_LEN, MAX_NAME_LEN, MAX_PAGE_SIZE},
    error::ErrorBody,
};

/// The path of the document on the API's listener.
pub const DOCUMENT_PATH: &str = "/openapi.json";

/// The document's fixed parts; the operations are added by the routes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "user-service",
        description = "The user directory of switchyard as JSON over HTTP: the same directory, \
validation and errors as the gRPC service user.v1.UserService. Every error is \
`{\"error\": {\"code\", \"message\", \"field\"}}` with the gRPC code name as `code`.",
    ),
    tags(
        (name = "users", description = "The user directory"),
        (name = "document", description = "This document"),
    ),
)]
struct ApiDoc;

/// The whole document: its title and tags plus every route of
/// [`crate::http`], each with its operation.
pub fn document() -> utoipa::openapi::OpenApi {
    crate::http::routes(ApiDoc::openapi()).into_openapi()
}

/// The document as served: built once, on first request.
static DOCUMENT_JSON: LazyLock<Bytes> = LazyLock::new(|| {
    Bytes::from(
        document()
            .to_pretty_json()
            .expect("the OpenAPI document serializes"),
    )
});

/// `GET /openapi.json`.
#[utoipa::path(
    get,
    path = DOCUMENT_PATH,
    tag = "document",
    operation_id = "openapi",
    summary = "This document",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json", body = Object),
        (status = 504, description = "DEADLINE_EXCEEDED: the request took longer than the server's `request_timeout`", body = ErrorBody),
    ),
)]
pub async fn serve_document() -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT_JSON.clone(),
    )
        .into_response()
}

// The field schemas, from the domain's limits.

/// Characters `char::is_control` finds (Unicode Cc), as the ranges of a
/// regex class.
const CONTROL: &str = r"\u0000-\u001F\u007F-\u009F";
/// What `str::trim` removes and `char::is_whitespace` finds (Unicode
/// White_Space).
const SPACE: &str =
    r"\u0009-\u000D\u0020\u0085\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";
/// Both of the above.
const CONTROL_OR_SPACE: &str =
    r"\u0000-\u0020\u007F-\u00A0\u1680\u2000-\u200A\u2028\u2029\u202F\u205F\u3000";

fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

/// A user id (`domain::validate_id`).
pub fn user_id() -> Object {
    string(&format!(
        "1 to {MAX_ID_LEN} letters, digits, `.`, `_` or `-`; chosen by the creator, immutable"
    ))
    .min_length(Some(1))
    .max_length(Some(MAX_ID_LEN))
    .pattern(Some(format!("^[A-Za-z0-9._-]{{1,{MAX_ID_LEN}}}$")))
    .examples(["u-1001"])
    .build()
}

/// A display name (`domain::UserFields`): what is left after trimming is 1
/// to [`MAX_NAME_LEN`] characters, starts and ends visibly and holds no
/// control character; the pattern says exactly that (no `maxLength`: the
/// trimmed whitespace does not count).
pub fn name() -> Object {
    let visible = format!("[^{CONTROL_OR_SPACE}]");
    let inner = format!("[^{CONTROL}]{{0,{}}}", MAX_NAME_LEN - 2);
    string(&format!(
        "display name: 1 to {MAX_NAME_LEN} characters, none of them a control character, \
         once the whitespace around it is trimmed (as it is before it is stored)"
    ))
    .min_length(Some(1))
    .pattern(Some(format!(
        "^[{SPACE}]*{visible}(?:{inner}{visible})?[{SPACE}]*$"
    )))
    .examples(["Alice"])
    .build()
}

/// A stored display name (trimmed and checked when it was set).
pub fn stored_name() -> Object {
    string("display name")
        .min_length(Some(1))
        .max_length(Some(MAX_NAME_LEN))
        .build()
}

/// An age in years.
pub fn age() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .description(Some("age in years"))
        .minimum(Some(0))
        .maximum(Some(MAX_AGE))
        .examples([30])
        .build()
}

/// A contact address as a request sets it (`domain::validate_email`),
/// surrounding whitespace trimmed first; empty (or blank) means none.
///
/// The service's limit is [`MAX_EMAIL_LEN`] bytes of UTF-8, which
/// `maxLength` (characters) cannot say; the schema allows what surely fits:
/// any address of at most a quarter of that in characters (a character is
/// at most 4 bytes), or an ASCII one of the full length; and whitespace
/// alone, of any length (trimmed to nothing).
pub fn email() -> RefOr<Schema> {
    let short = MAX_EMAIL_LEN / 4;
    let any = email_pattern(
        SPACE,
        &format!("[^{CONTROL_OR_SPACE}@]"),
        &format!("[^{CONTROL_OR_SPACE}@.]"),
        &format!("[^{CONTROL_OR_SPACE}@.-]"),
    );
    // Printable ASCII but space: 0x21 to 0x7E, less '@' (0x40), '.' (0x2E)
    // and '-' (0x2D) where the rule says so.
    let ascii = email_pattern(
        r"\u0009-\u000D\u0020",
        r"[\u0021-\u003F\u0041-\u007E]",
        r"[\u0021-\u002D\u002F-\u003F\u0041-\u007E]",
        r"[\u0021-\u002C\u002F-\u003F\u0041-\u007E]",
    );
    AnyOfBuilder::new()
        .schema_type(Type::String)
        .description(Some(format!(
            "contact address: empty, or `local@domain.tld` without whitespace inside (at least two \
             domain labels, none empty or starting or ending with `-`), at most {MAX_EMAIL_LEN} \
             bytes in UTF-8 once the whitespace around it is trimmed; so any such address of at \
             most {short} characters, or an ASCII one of at most {MAX_EMAIL_LEN}"
        )))
        .item(string("none: empty or blank, of any length").pattern(Some(format!("^[{SPACE}]*$"))))
        .item(
            string("any characters")
                .max_length(Some(short))
                .pattern(Some(any)),
        )
        .item(
            string("ASCII")
                .max_length(Some(MAX_EMAIL_LEN))
                .pattern(Some(ascii)),
        )
        .examples(["alice@example.com"])
        .into()
}

/// `local@label.label...` (at least two labels, each not starting or
/// ending with `-`), or nothing, with `space` around: `local`, `inner` and
/// `edge` are the classes of a character of the local part, of a label, and
/// of a label's first and last.
fn email_pattern(space: &str, local: &str, inner: &str, edge: &str) -> String {
    let label = format!("(?:{edge}|{edge}{inner}*{edge})");
    format!("^[{space}]*(?:{local}+@{label}(?:\\.{label})+)?[{space}]*$")
}

/// A stored contact address: empty or one [`email`] accepted.
pub fn stored_email() -> Object {
    string("contact address, empty when none")
        .max_length(Some(MAX_EMAIL_LEN))
        .build()
}

/// Unix milliseconds.
pub fn unix_millis() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int64)))
        .description(Some("Unix time in milliseconds"))
        .build()
}

/// `page_size` (`domain::PageRequest`).
pub fn page_size() -> Object {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(SchemaFormat::KnownFormat(KnownFormat::Int32)))
        .description(Some(format!(
            "users per page; 0 or absent: {DEFAULT_PAGE_SIZE}; more than {MAX_PAGE_SIZE} is \
             reduced to {MAX_PAGE_SIZE}"
        )))
        .minimum(Some(0))
        .build()
}

/// `page_token`: opaque to callers, described by its exact form all the
/// same, so the document names what the service accepts: `p1.` and the hex
/// of a user id (each byte one of the id's characters, either case).
pub fn page_token() -> Object {
    let id_byte = "(?:2[DEde]|3[0-9]|4[1-9A-Fa-f]|5[0-9AaFf]|6[1-9A-Fa-f]|7[0-9Aa])";
    string("opaque: the `next_page_token` of the previous page; empty or absent for the first page")
        .pattern(Some(format!("^(?:p1\\.{id_byte}{{1,{MAX_ID_LEN}}})?$")))
        .build()
}

/// The gRPC code names an HTTP error body can carry.
pub const ERROR_CODES: &[&str] = &[
    "INVALID_ARGUMENT",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "DEADLINE_EXCEEDED",
    "UNAVAILABLE",
    "INTERNAL",
];

impl PartialSchema for ErrorBody {
    fn schema() -> RefOr<Schema> {
        let detail = ObjectBuilder::new()
            .property(
                "code",
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .enum_values(Some(ERROR_CODES.iter().copied()))
                    .description(Some("the gRPC code name, the same on both protocols")),
            )
            .required("code")
            .property(
                "message",
                string("what is wrong; names the field of a validation error"),
            )
            .required("message")
            .property(
                "field",
                string("the offending request field of a validation error (absent otherwise)"),
            );
        ObjectBuilder::new()
            .description(Some("An error: every status that is not a success"))
            .property("error", detail)
            .required("error")
            .into()
    }
}

impl ToSchema for ErrorBody {
    fn name() -> Cow<'static, str> {
        Cow::Borrowed("Error")
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use http::{Method, Request};
    use proptest::prelude::*;
    use serde_json::Value;
    use tower::Service as _;

    use super::*;
    use crate::{
        directory::UserDirectory,
        domain::{PageRequest, UserFields, encode_page_token, validate_id},
        error::{UserError, code_name},
        read_cache::{CacheSettings, ReadCache},
    };

    fn served() -> Value {
        serde_json::from_slice(&DOCUMENT_JSON).unwrap()
    }

    /// The schema at a JSON pointer of the served document.
    fn schema(pointer: &str) -> Value {
        served()
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no {pointer} in the document"))
            .clone()
    }

    fn query_parameter(name: &str) -> Value {
        let parameters = schema("/paths/~1v1~1users/get/parameters");
        let parameter = parameters
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no query parameter {name}"));
        parameter["schema"].clone()
    }

    /// Whether a string schema (`minLength`, `maxLength` in characters,
    /// `pattern`) accepts `value`, as a JSON Schema validator would.
    fn accepts(schema: &Value, value: &str) -> bool {
        if let Some(any_of) = schema["anyOf"].as_array() {
            return any_of.iter().any(|branch| accepts(branch, value));
        }
        let chars = value.chars().count() as u64;
        let min = schema["minLength"].as_u64().unwrap_or(0);
        let max = schema["maxLength"].as_u64().unwrap_or(u64::MAX);
        let pattern = schema["pattern"]
            .as_str()
            .map(|p| regex::Regex::new(p).expect("the pattern compiles"));
        (min..=max).contains(&chars) && pattern.is_none_or(|p| p.is_match(value))
    }

    /// Characters the tests build strings from: the ones each rule is
    /// about (whitespace of several kinds, controls, `@`, `.`, `-`, non-ASCII).
    const ALPHABET: &str = "[a-zA-Z0-9._@ \\-\t\n\u{0}\u{7f}\u{85}\u{a0}\u{2003}\u{3000}é猫/%]";

    fn strings(regex: &str) -> impl Strategy<Value = String> {
        proptest::string::string_regex(regex).unwrap()
    }

    proptest! {
        #[test]
        fn the_id_schema_is_exactly_validate_id(id in strings(&format!("{ALPHABET}{{0,70}}"))) {
            let ok = validate_id("user_id", &id).is_ok();
            prop_assert_eq!(accepts(&schema("/components/schemas/CreateUser/properties/user_id"), &id), ok);
            let path = schema("/paths/~1v1~1users~1{id}/get/parameters/0/schema");
            prop_assert_eq!(accepts(&path, &id), ok);
        }

        #[test]
        fn the_name_schema_is_exactly_the_domain_rule(name in strings(&format!("{ALPHABET}{{0,12}}|{ALPHABET}{{195,205}}|[ \t]?[a-zé猫 ]{{198,203}}[ \n]?"))) {
            let ok = UserFields::new(&name, 1, "").is_ok();
            let documented = accepts(&schema("/components/schemas/CreateUser/properties/name"), &name);
            prop_assert_eq!(documented, ok, "{:?}", name);
        }

        #[test]
        fn the_email_schema_is_the_domain_rule(email in strings(&format!(
            "{ALPHABET}{{0,10}}@{ALPHABET}{{0,10}}|{ALPHABET}{{0,20}}|[ \t]?[a-z.\\-]{{1,4}}@[a-z\\-]{{0,3}}\\.[a-zé.\\-]{{0,4}}[ \n]?"
        ))) {
            // Short enough for the length rules not to matter (see below).
            let ok = UserFields::new("A", 1, &email).is_ok();
            let email_schema = schema("/components/schemas/UpdateUser/properties/email");
            prop_assert_eq!(accepts(&email_schema, &email), ok, "{:?}", email);
            // The ASCII branch alone, for the ASCII ones.
            if email.is_ascii() {
                prop_assert_eq!(accepts(&email_schema["anyOf"][2], &email), ok, "{:?}", email);
            }
        }

        #[test]
        fn the_page_token_schema_is_exactly_the_decoder(
            id in strings(&format!("{ALPHABET}{{0,66}}")),
            garbage in "p1\\.[0-9a-fA-FxX]{0,10}|[a-z0-9.]{0,8}",
        ) {
            let token_schema = query_parameter("page_token");
            for token in [encode_page_token(&id), encode_page_token(&id).to_uppercase().replacen("P1", "p1", 1), garbage] {
                let ok = PageRequest::new(1, &token).is_ok();
                prop_assert_eq!(accepts(&token_schema, &token), ok, "{:?}", token);
            }
        }
    }

    #[test]
    fn the_email_length_limit_is_the_domains_and_never_looser() {
        let email_schema = schema("/components/schemas/CreateUser/properties/email");
        let domain = "@b.example.com";
        // (the service accepts it, the document does) for an address of
        // `length` characters whose local part repeats `fill`.
        let verdicts = |fill: &str, length: usize| {
            let email = format!("{}{domain}", fill.repeat(length - domain.len()));
            assert_eq!(email.chars().count(), length);
            let service = UserFields::new("A", 1, &email).is_ok();
            (service, accepts(&email_schema, &email))
        };
        // ASCII: exactly the service's limit.
        assert_eq!(verdicts("a", MAX_EMAIL_LEN), (true, true));
        assert_eq!(verdicts("a", MAX_EMAIL_LEN + 1), (false, false));
        // Four-byte characters: a quarter of the limit, which always fits.
        assert_eq!(verdicts("😍", MAX_EMAIL_LEN / 4), (true, true));
        assert_eq!(verdicts("😍", MAX_EMAIL_LEN / 4 + 1), (true, false));
        // Past what fits: refused by both.
        assert_eq!(verdicts("😍", 80), (false, false));
        // Two-byte characters past a quarter: the service takes them, the
        // document (which cannot count bytes) does not promise them.
        assert_eq!(verdicts("é", 120), (true, false));
        // Blank, however long: no address.
        let blank = "\u{85} ".repeat(MAX_EMAIL_LEN);
        assert!(UserFields::new("A", 1, &blank).is_ok());
        assert!(accepts(&email_schema, &blank));
    }

    #[test]
    fn numbers_have_the_domains_bounds_and_formats() {
        for (pointer, min, max) in [
            (
                "/components/schemas/CreateUser/properties/age",
                0,
                Some(MAX_AGE),
            ),
            ("/components/schemas/User/properties/age", 0, Some(MAX_AGE)),
        ] {
            let age = schema(pointer);
            assert_eq!(age["format"], "int32", "{pointer}");
            assert_eq!(age["minimum"], min, "{pointer}");
            assert_eq!(age["maximum"], max.unwrap(), "{pointer}");
        }
        for age in [-1, 0, MAX_AGE, MAX_AGE + 1] {
            assert_eq!(
                UserFields::new("A", age, "").is_ok(),
                (0..=MAX_AGE).contains(&age)
            );
        }
        let page_size = query_parameter("page_size");
        assert_eq!(page_size["format"], "int32");
        assert_eq!(page_size["minimum"], 0);
        for size in [-1, 0, 1, i32::MAX] {
            assert_eq!(PageRequest::new(size, "").is_ok(), size >= 0, "{size}");
        }
        assert_eq!(
            schema("/components/schemas/User/properties/created_at/format"),
            "int64"
        );
    }

    #[test]
    fn request_bodies_refuse_unknown_fields_as_the_service_does() {
        for body in ["CreateUser", "UpdateUser"] {
            let body = schema(&format!("/components/schemas/{body}"));
            assert_eq!(body["additionalProperties"], false, "{body}");
        }
        let create = schema("/components/schemas/CreateUser/required");
        assert_eq!(create, serde_json::json!(["user_id", "name", "age"]));
    }

    #[test]
    fn every_error_code_the_service_sends_is_listed() {
        let listed = schema("/components/schemas/Error/properties/error/properties/code/enum");
        let errors = [
            UserError::invalid("age", "x"),
            UserError::NotFound(String::new()),
            UserError::AlreadyExists(String::new()),
            UserError::DeadlineExceeded(String::new()),
            UserError::Unavailable(String::new()),
            UserError::Internal(String::new()),
        ];
        for error in errors {
            let code = code_name(error.code());
            assert!(listed.as_array().unwrap().contains(&code.into()), "{code}");
        }
    }

    #[test]
    fn every_reference_resolves() {
        let document = served();
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap();
            let pointer = target.strip_prefix('#').expect("a local reference");
            assert!(document.pointer(pointer).is_some(), "{target} dangles");
        }
    }

    /// The router against its own document: every documented operation is
    /// served (not 405, not the fallback's 404), and every other method on a
    /// documented path is 405 with the JSON error body. (Routes are only
    /// ever added together with their operation, through
    /// [`crate::http::routes`]; this catches one served beside it.)
    #[tokio::test]
    async fn the_document_lists_every_route_the_router_serves() {
        let directory = UserDirectory::new(ReadCache::new(CacheSettings {
            capacity: 0,
            ttl: Duration::ZERO,
        }));
        let mut router = crate::http::router(directory, Duration::from_secs(5), 1024);
        let document = served();
        let paths = document["paths"].as_object().unwrap();
        assert!(paths.contains_key("/v1/users"));
        assert!(paths.contains_key("/v1/users/{id}"));
        assert!(paths.contains_key(DOCUMENT_PATH));
        for (path, item) in paths {
            let uri = path.replace("{id}", "u-1");
            for method in [
                Method::GET,
                Method::POST,
                Method::PUT,
                Method::DELETE,
                Method::PATCH,
                Method::OPTIONS,
                Method::TRACE,
                Method::HEAD,
            ] {
                // HEAD is served wherever GET is (HTTP semantics; OpenAPI
                // lists GET only).
                let documented_as = if method == Method::HEAD {
                    "get".to_string()
                } else {
                    method.as_str().to_lowercase()
                };
                let documented = item.get(&documented_as).is_some();
                let request = Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from("{}"))
                    .unwrap();
                let response = router.call(request).await.unwrap();
                let status = response.status();
                let body = axum::body::to_bytes(response.into_body(), 1 << 20)
                    .await
                    .unwrap();
                let what = format!(
                    "{method} {uri}: {status} {}",
                    String::from_utf8_lossy(&body)
                );
                if documented {
                    assert_ne!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
                    assert!(
                        !String::from_utf8_lossy(&body).contains("no route"),
                        "{what}"
                    );
                } else {
                    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED, "{what}");
                    let error: Value = serde_json::from_slice(&body).unwrap();
                    assert_eq!(error["error"]["code"], "UNIMPLEMENTED", "{what}");
                }
            }
        }
    }
}
