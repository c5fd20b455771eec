//! What a user is, and what makes a request about one valid.
//!
//! Validation lives here, once, for both protocols: every rule fails with
//! [`UserError::InvalidArgument`] naming the request field.

use crate::error::UserError;

/// Longest user id accepted.
pub const MAX_ID_LEN: usize = 64;
/// Longest name accepted, in characters.
pub const MAX_NAME_LEN: usize = 200;
/// Longest email accepted (RFC 5321's path limit).
pub const MAX_EMAIL_LEN: usize = 254;
/// Oldest age accepted; ages run from 0 to this, inclusive.
pub const MAX_AGE: i32 = 150;
/// Page size used when the caller asks for 0.
pub const DEFAULT_PAGE_SIZE: u32 = 50;
/// Larger page sizes are reduced to this.
pub const MAX_PAGE_SIZE: u32 = 1000;

/// A stored user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// Chosen by the creator, e.g. `u-1001`; immutable.
    pub id: String,
    /// Display name, never empty.
    pub name: String,
    /// 0 to [`MAX_AGE`].
    pub age: i32,
    /// Contact address; empty when the user has none.
    pub email: String,
    /// Unix milliseconds of creation.
    pub created_at: i64,
    /// Unix milliseconds of the last update.
    pub updated_at: i64,
}

/// The fields a caller sets on create and replaces on update, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserFields {
    /// Trimmed, non-empty.
    pub name: String,
    /// 0 to [`MAX_AGE`].
    pub age: i32,
    /// Trimmed; empty or a well-formed address.
    pub email: String,
}

impl UserFields {
    /// Validates raw input; the error names the first bad field.
    pub fn new(name: &str, age: i32, email: &str) -> Result<Self, UserError> {
        let name = name.trim();
        if name.is_empty() {
            return Err(UserError::invalid("name", "must not be empty"));
        }
        if name.chars().count() > MAX_NAME_LEN {
            return Err(UserError::invalid(
                "name",
                format!("must be at most {MAX_NAME_LEN} characters"),
            ));
        }
        if name.chars().any(char::is_control) {
            return Err(UserError::invalid(
                "name",
                "must not contain control characters",
            ));
        }
        if !(0..=MAX_AGE).contains(&age) {
            return Err(UserError::invalid(
                "age",
                format!("must be between 0 and {MAX_AGE}, got {age}"),
            ));
        }
        let email = email.trim();
        if !email.is_empty() {
            validate_email(email)?;
        }
        Ok(UserFields {
            name: name.to_string(),
            age,
            email: email.to_string(),
        })
    }
}

/// Checks a user id: 1 to [`MAX_ID_LEN`] characters out of `A-Z a-z 0-9 . _ -`
/// (safe in URLs, log lines and AMQP headers without escaping).
pub fn validate_id(field: &'static str, id: &str) -> Result<(), UserError> {
    if id.is_empty() {
        return Err(UserError::invalid(field, "must not be empty"));
    }
    if id.len() > MAX_ID_LEN {
        return Err(UserError::invalid(
            field,
            format!("must be at most {MAX_ID_LEN} characters"),
        ));
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(UserError::invalid(
            field,
            "may only contain letters, digits, '.', '_' and '-'",
        ));
    }
    Ok(())
}

/// A pragmatic email check: `local@domain.tld`, no spaces, sane lengths.
/// (Full RFC 5322 parsing accepts addresses no mail system delivers to.)
fn validate_email(email: &str) -> Result<(), UserError> {
    let malformed = |reason: &str| Err(UserError::invalid("email", reason.to_string()));
    if email.len() > MAX_EMAIL_LEN {
        return malformed("must be at most 254 characters");
    }
    if email.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return malformed("must not contain spaces");
    }
    let Some((local, domain)) = email.split_once('@') else {
        return malformed("must look like name@example.com");
    };
    if local.is_empty() || domain.contains('@') {
        return malformed("must look like name@example.com");
    }
    let labels: Vec<&str> = domain.split('.').collect();
    if labels.len() < 2
        || labels
            .iter()
            .any(|label| label.is_empty() || label.starts_with('-') || label.ends_with('-'))
    {
        return malformed("must have a domain like example.com");
    }
    Ok(())
}

/// One page of a listing request, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// How many users to return (1 to [`MAX_PAGE_SIZE`]).
    pub size: u32,
    /// Return users whose id sorts after this one; `None` for the first page.
    pub after: Option<String>,
}

impl PageRequest {
    /// Validates `page_size` (0 = default, negative = invalid, too large =
    /// reduced) and decodes `page_token`.
    pub fn new(page_size: i32, page_token: &str) -> Result<Self, UserError> {
        let size = match page_size {
            n if n < 0 => {
                return Err(UserError::invalid(
                    "page_size",
                    format!("must not be negative, got {n}"),
                ));
            }
            0 => DEFAULT_PAGE_SIZE,
            n => (n as u32).min(MAX_PAGE_SIZE),
        };
        let after = if page_token.is_empty() {
            None
        } else {
            Some(decode_page_token(page_token)?)
        };
        Ok(PageRequest { size, after })
    }
}

/// The marker that makes a token ours and versions its format.
const PAGE_TOKEN_PREFIX: &str = "p1.";

/// The token that continues a listing after `last_id`. Opaque to callers:
/// the id hex-encoded behind a version prefix.
pub fn encode_page_token(last_id: &str) -> String {
    let mut token = String::with_capacity(PAGE_TOKEN_PREFIX.len() + last_id.len() * 2);
    token.push_str(PAGE_TOKEN_PREFIX);
    for byte in last_id.bytes() {
        token.push_str(&format!("{byte:02x}"));
    }
    token
}

fn decode_page_token(token: &str) -> Result<String, UserError> {
    let invalid = || UserError::invalid("page_token", "not a token returned by this service");
    let hex = token.strip_prefix(PAGE_TOKEN_PREFIX).ok_or_else(invalid)?;
    if hex.len() % 2 != 0 || hex.len() > MAX_ID_LEN * 2 {
        return Err(invalid());
    }
    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).map_err(|_| invalid()))
        .collect::<Result<Vec<u8>, _>>()?;
    let id = String::from_utf8(bytes).map_err(|_| invalid())?;
    validate_id("page_token", &id).map_err(|_| invalid())?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl std::fmt::Debug, UserError>) -> &'static str {
        result.unwrap_err().field().expect("a validation error")
    }

    #[test]
    fn good_fields_are_trimmed_and_kept() {
        let fields = UserFields::new("  Alice ", 30, " alice@example.com ").unwrap();
        assert_eq!(fields.name, "Alice");
        assert_eq!(fields.email, "alice@example.com");
        assert_eq!(UserFields::new("Bob", 0, "").unwrap().email, "");
        assert_eq!(UserFields::new("Old", MAX_AGE, "").unwrap().age, MAX_AGE);
    }

    #[test]
    fn each_bad_field_is_named() {
        assert_eq!(field_of(UserFields::new("", 30, "")), "name");
        assert_eq!(field_of(UserFields::new("   ", 30, "")), "name");
        assert_eq!(field_of(UserFields::new(&"x".repeat(201), 30, "")), "name");
        assert_eq!(field_of(UserFields::new("A\u{7}", 30, "")), "name");
        assert_eq!(field_of(UserFields::new("A", -1, "")), "age");
        assert_eq!(field_of(UserFields::new("A", 151, "")), "age");
        for email in [
            "alice",
            "@example.com",
            "alice@",
            "alice@localhost",
            "a b@example.com",
            "a@b@example.com",
            "alice@.com",
            "alice@-x.com",
        ] {
            assert_eq!(field_of(UserFields::new("A", 1, email)), "email", "{email}");
        }
    }

    #[test]
    fn ids_are_checked() {
        validate_id("user_id", "u-1001").unwrap();
        validate_id("user_id", &"a".repeat(MAX_ID_LEN)).unwrap();
        for bad in ["", "u 1", "u/1", "ü", &"a".repeat(MAX_ID_LEN + 1)] {
            assert_eq!(field_of(validate_id("user_id", bad)), "user_id", "{bad:?}");
        }
    }

    #[test]
    fn page_tokens_round_trip_and_garbage_is_rejected() {
        let token = encode_page_token("u-1001");
        let page = PageRequest::new(10, &token).unwrap();
        assert_eq!(page.after.as_deref(), Some("u-1001"));
        for bad in ["u-1001", "p1.zz", "p1.abc", "p1.2f2f", "p1."] {
            assert_eq!(field_of(PageRequest::new(10, bad)), "page_token", "{bad}");
        }
    }

    #[test]
    fn page_sizes_default_clamp_and_reject_negatives() {
        assert_eq!(PageRequest::new(0, "").unwrap().size, DEFAULT_PAGE_SIZE);
        assert_eq!(PageRequest::new(7, "").unwrap().size, 7);
        assert_eq!(PageRequest::new(i32::MAX, "").unwrap().size, MAX_PAGE_SIZE);
        assert_eq!(field_of(PageRequest::new(-1, "")), "page_size");
    }
}
