//! Request bodies -> typed inputs, enforcing every constraint of the Proton model.
//!
//! A member of the wrong JSON type is a `SerializationException` (the body cannot be read);
//! a readable body that breaks a constraint is a `ValidationException` whose message lists every
//! violation in the format AWS uses ("1 validation error detected: Value 'x' at 'field' failed to
//! satisfy constraint: Member must ..."), so clients and people see which field is wrong.
//! Unknown members are ignored and `null` counts as absent, as AWS does.

use serde_json::{Map, Value};

use super::error::ApiError;
use super::requests::{
    CreateRequest, ListRequest, ListTagsRequest, RequestedBy, Status, UpdateRequest,
};

pub type Object = Map<String, Value>;

const ID_PATTERN: &str = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$";
const ACCOUNT_PATTERN: &str = r"^\d{12}$";
const RESOURCE_NAME_PATTERN: &str = r"^[0-9A-Za-z]+[0-9A-Za-z_\-]*$";
const ROLE_ARN_PATTERN: &str =
    r"^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$";
const ARN_PATTERN: &str = r"^arn:(aws|aws-cn|aws-us-gov):[a-zA-Z0-9-]+:[a-zA-Z0-9-]*:\d{12}:([\w+=,.@-]+[/:])*[\w+=,.@-]+$";
const CLIENT_TOKEN_PATTERN: &str = "^[!-~]*$";
const NEXT_TOKEN_PATTERN: &str = "^[A-Za-z0-9+=/]+$";
const MAX_TAGS_PER_REQUEST: usize = 50;
const DEFAULT_MAX_RESULTS: usize = 100;

/// The body of an awsJson request: a JSON object. An empty body is read as `{}`.
pub fn parse_body(body: &[u8]) -> Result<Object, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Object::new());
    }
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(ApiError::serialization(
            "The request body must be a JSON object",
        )),
        Err(err) => Err(ApiError::serialization(format!(
            "The request body is not valid JSON: {err}"
        ))),
    }
}

/// Input of Get, Delete, Accept and Reject: just the connection id.
pub fn id_input(body: &Object) -> Result<String, ApiError> {
    let mut v = Violations::default();
    let id = required(&mut v, "id", string(body, "id")?);
    if let Some(id) = &id {
        connection_id(&mut v, "id", id);
    }
    v.finish()?;
    Ok(id.unwrap_or_default())
}

pub fn create_input(body: &Object) -> Result<CreateRequest, ApiError> {
    let mut v = Violations::default();
    let client_token = string(body, "clientToken")?;
    if let Some(token) = &client_token {
        length(&mut v, "clientToken", token, 0, 64);
        pattern(
            &mut v,
            "clientToken",
            token,
            token.bytes().all(|b| (b'!'..=b'~').contains(&b)),
            CLIENT_TOKEN_PATTERN,
        );
    }
    let environment_name = required(&mut v, "environmentName", string(body, "environmentName")?);
    if let Some(name) = &environment_name {
        resource_name(&mut v, "environmentName", name);
    }
    let management_account_id = required(
        &mut v,
        "managementAccountId",
        string(body, "managementAccountId")?,
    );
    if let Some(account) = &management_account_id {
        account_id(&mut v, "managementAccountId", account);
    }
    let role_arn = optional_role_arn(&mut v, body, "roleArn")?;
    let codebuild_role_arn = optional_role_arn(&mut v, body, "codebuildRoleArn")?;
    let component_role_arn = optional_role_arn(&mut v, body, "componentRoleArn")?;
    let tags = tag_list(&mut v, body, "tags")?.unwrap_or_default();
    v.finish()?;
    Ok(CreateRequest {
        client_token,
        environment_name: environment_name.unwrap_or_default(),
        management_account_id: management_account_id.unwrap_or_default(),
        role_arn,
        codebuild_role_arn,
        component_role_arn,
        tags,
    })
}

pub fn update_input(body: &Object) -> Result<UpdateRequest, ApiError> {
    let mut v = Violations::default();
    let id = required(&mut v, "id", string(body, "id")?);
    if let Some(id) = &id {
        connection_id(&mut v, "id", id);
    }
    let role_arn = optional_role_arn(&mut v, body, "roleArn")?;
    let codebuild_role_arn = optional_role_arn(&mut v, body, "codebuildRoleArn")?;
    let component_role_arn = optional_role_arn(&mut v, body, "componentRoleArn")?;
    v.finish()?;
    Ok(UpdateRequest {
        id: id.unwrap_or_default(),
        role_arn,
        codebuild_role_arn,
        component_role_arn,
    })
}

pub fn list_input(body: &Object) -> Result<ListRequest, ApiError> {
    let mut v = Violations::default();
    let requested_by = required(&mut v, "requestedBy", string(body, "requestedBy")?);
    let side = requested_by.as_deref().and_then(RequestedBy::parse);
    if let Some(requested_by) = &requested_by
        && side.is_none()
    {
        v.add(
            &quoted(requested_by),
            "requestedBy",
            "satisfy enum value set: [MANAGEMENT_ACCOUNT, ENVIRONMENT_ACCOUNT]",
        );
    }
    let environment_name = string(body, "environmentName")?;
    if let Some(name) = &environment_name {
        resource_name(&mut v, "environmentName", name);
    }
    let mut statuses = vec![];
    for (i, status) in string_list(body, "statuses")?
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        match Status::parse(status) {
            Some(status) => statuses.push(status),
            None => v.add(
                &quoted(status),
                &format!("statuses.{}.member", i + 1),
                "satisfy enum value set: [PENDING, CONNECTED, REJECTED]",
            ),
        }
    }
    let max_results = max_results(&mut v, body)?;
    let next_token = string(body, "nextToken")?;
    if let Some(token) = &next_token {
        pattern(
            &mut v,
            "nextToken",
            token,
            !token.is_empty()
                && token
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+=/".contains(c)),
            NEXT_TOKEN_PATTERN,
        );
    }
    v.finish()?;
    Ok(ListRequest {
        // Checked above: finish() refused a missing or unknown one.
        requested_by: side.unwrap_or(RequestedBy::EnvironmentAccount),
        environment_name,
        statuses,
        max_results,
        next_token,
    })
}

pub fn tag_input(body: &Object) -> Result<(String, Vec<(String, String)>), ApiError> {
    let mut v = Violations::default();
    let arn = resource_arn(&mut v, body)?;
    let tags = tag_list(&mut v, body, "tags")?;
    let tags = required(&mut v, "tags", tags);
    v.finish()?;
    Ok((arn.unwrap_or_default(), tags.unwrap_or_default()))
}

pub fn untag_input(body: &Object) -> Result<(String, Vec<String>), ApiError> {
    let mut v = Violations::default();
    let arn = resource_arn(&mut v, body)?;
    let keys = required(&mut v, "tagKeys", string_list(body, "tagKeys")?);
    if let Some(keys) = &keys {
        list_size(&mut v, "tagKeys", keys.len());
        for (i, key) in keys.iter().enumerate() {
            length(&mut v, &format!("tagKeys.{}.member", i + 1), key, 1, 128);
        }
    }
    v.finish()?;
    Ok((arn.unwrap_or_default(), keys.unwrap_or_default()))
}

pub fn list_tags_input(body: &Object) -> Result<ListTagsRequest, ApiError> {
    let mut v = Violations::default();
    let arn = resource_arn(&mut v, body)?;
    let max_results = max_results(&mut v, body)?;
    // The model types this nextToken as a plain String: any value is readable, and an unknown
    // one is refused when it is used.
    let next_token = string(body, "nextToken")?;
    v.finish()?;
    Ok(ListTagsRequest {
        resource_arn: arn.unwrap_or_default(),
        max_results,
        next_token,
    })
}

// ---- constraint checks ---------------------------------------------------------------------

/// Collects every violation of one request, so a caller fixes them all in one round trip.
#[derive(Default)]
pub(super) struct Violations(Vec<String>);

impl Violations {
    pub(super) fn add(&mut self, value: &str, at: &str, must: &str) {
        self.0.push(format!(
            "Value {value} at '{at}' failed to satisfy constraint: Member must {must}"
        ));
    }

    pub(super) fn finish(self) -> Result<(), ApiError> {
        match self.0.len() {
            0 => Ok(()),
            1 => Err(ApiError::validation(format!(
                "1 validation error detected: {}",
                self.0.join("; ")
            ))),
            n => Err(ApiError::validation(format!(
                "{n} validation errors detected: {}",
                self.0.join("; ")
            ))),
        }
    }
}

pub(super) fn quoted(s: &str) -> String {
    format!("'{s}'")
}

pub(super) fn required<T>(v: &mut Violations, at: &str, value: Option<T>) -> Option<T> {
    if value.is_none() {
        v.add("null", at, "not be null");
    }
    value
}

/// AWS counts lengths in UTF-16 code units (Java strings).
pub(super) fn length(v: &mut Violations, at: &str, s: &str, min: usize, max: usize) {
    let len = s.encode_utf16().count();
    if len < min {
        v.add(
            &quoted(s),
            at,
            &format!("have length greater than or equal to {min}"),
        );
    }
    if len > max {
        v.add(
            &quoted(s),
            at,
            &format!("have length less than or equal to {max}"),
        );
    }
}

pub(super) fn pattern(v: &mut Violations, at: &str, s: &str, matches: bool, pattern: &str) {
    if !matches {
        v.add(
            &quoted(s),
            at,
            &format!("satisfy regular expression pattern: {pattern}"),
        );
    }
}

fn list_size(v: &mut Violations, at: &str, len: usize) {
    if len > MAX_TAGS_PER_REQUEST {
        v.add(
            &format!("'[{len} items]'"),
            at,
            &format!("have length less than or equal to {MAX_TAGS_PER_REQUEST}"),
        );
    }
}

fn connection_id(v: &mut Violations, at: &str, s: &str) {
    pattern(v, at, s, is_connection_id(s), ID_PATTERN);
}

fn account_id(v: &mut Violations, at: &str, s: &str) {
    pattern(v, at, s, is_account_id(s), ACCOUNT_PATTERN);
}

fn resource_name(v: &mut Violations, at: &str, s: &str) {
    length(v, at, s, 1, 100);
    pattern(v, at, s, is_resource_name(s), RESOURCE_NAME_PATTERN);
}

fn optional_role_arn(
    v: &mut Violations,
    body: &Object,
    at: &str,
) -> Result<Option<String>, ApiError> {
    let value = string(body, at)?;
    if let Some(arn) = &value {
        length(v, at, arn, 1, 2048);
        pattern(v, at, arn, is_role_arn(arn), ROLE_ARN_PATTERN);
    }
    Ok(value)
}

fn resource_arn(v: &mut Violations, body: &Object) -> Result<Option<String>, ApiError> {
    let arn = required(v, "resourceArn", string(body, "resourceArn")?);
    if let Some(arn) = &arn {
        length(v, "resourceArn", arn, 1, 200);
        pattern(v, "resourceArn", arn, is_arn(arn), ARN_PATTERN);
    }
    Ok(arn)
}

fn max_results(v: &mut Violations, body: &Object) -> Result<usize, ApiError> {
    match integer(body, "maxResults")? {
        None => Ok(DEFAULT_MAX_RESULTS),
        Some(n) if n < 1 => {
            v.add(
                &quoted(&n.to_string()),
                "maxResults",
                "have value greater than or equal to 1",
            );
            Ok(DEFAULT_MAX_RESULTS)
        }
        Some(n) if n > 100 => {
            v.add(
                &quoted(&n.to_string()),
                "maxResults",
                "have value less than or equal to 100",
            );
            Ok(DEFAULT_MAX_RESULTS)
        }
        Some(n) => Ok(usize::try_from(n).unwrap_or(DEFAULT_MAX_RESULTS)),
    }
}

fn tag_list(
    v: &mut Violations,
    body: &Object,
    at: &str,
) -> Result<Option<Vec<(String, String)>>, ApiError> {
    let Some(items) = array(body, at)? else {
        return Ok(None);
    };
    list_size(v, at, items.len());
    let mut tags = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let member = format!("{at}.{}.member", i + 1);
        let Value::Object(tag) = item else {
            return Err(type_error(&member, "an object", item));
        };
        let key_at = format!("{member}.key");
        let value_at = format!("{member}.value");
        let key = required(v, &key_at, string_at(tag.get("key"), &key_at)?);
        let value = required(v, &value_at, string_at(tag.get("value"), &value_at)?);
        if let Some(key) = &key {
            length(v, &key_at, key, 1, 128);
        }
        if let Some(value) = &value {
            length(v, &value_at, value, 0, 256);
        }
        if let (Some(key), Some(value)) = (key, value) {
            tags.push((key, value));
        }
    }
    Ok(Some(tags))
}

// ---- JSON access ---------------------------------------------------------------------------

fn type_error(at: &str, expected: &str, found: &Value) -> ApiError {
    let found = match found {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    };
    ApiError::serialization(format!("Expected {expected} for '{at}' but found {found}"))
}

fn string_at(value: Option<&Value>, at: &str) -> Result<Option<String>, ApiError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(other) => Err(type_error(at, "a string", other)),
    }
}

fn string(body: &Object, name: &str) -> Result<Option<String>, ApiError> {
    string_at(body.get(name), name)
}

fn integer(body: &Object, name: &str) -> Result<Option<i64>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| type_error(name, "an integer", &Value::Number(n.clone()))),
        Some(other) => Err(type_error(name, "an integer", other)),
    }
}

fn array<'a>(body: &'a Object, name: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
    match body.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(items)) => Ok(Some(items)),
        Some(other) => Err(type_error(name, "an array", other)),
    }
}

fn string_list(body: &Object, name: &str) -> Result<Option<Vec<String>>, ApiError> {
    let Some(items) = array(body, name)? else {
        return Ok(None);
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item {
            Value::String(s) => Ok(s.clone()),
            other => Err(type_error(
                &format!("{name}.{}.member", i + 1),
                "a string",
                other,
            )),
        })
        .collect::<Result<Vec<_>, _>>()
        .map(Some)
}

// ---- the model's patterns, without a regex engine ----------------------------------------

/// `\w` of Java regexes (ASCII) plus the punctuation the IAM patterns allow.
pub(super) fn is_arn_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || "_+=,.@-".contains(c)
}

fn is_digits(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| b.is_ascii_digit())
}

pub fn is_connection_id(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(group, len)| {
            group.len() == len
                && group
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

pub fn is_account_id(s: &str) -> bool {
    is_digits(s, 12)
}

/// A region name that can stand in an ARN (`eu-west-1`, `us-gov-east-1`).
pub fn is_region(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

pub fn is_resource_name(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

fn strip_partition(s: &str) -> Option<&str> {
    ["aws:", "aws-cn:", "aws-us-gov:"]
        .iter()
        .find_map(|partition| s.strip_prefix(partition))
}

/// `^arn:(aws|aws-cn|aws-us-gov):iam::\d{12}:role/([\w+=,.@-]{1,512}[/:])*([\w+=,.@-]{1,64})$`
pub fn is_role_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:").and_then(strip_partition) else {
        return false;
    };
    let Some(rest) = rest.strip_prefix("iam::") else {
        return false;
    };
    let Some((account, rest)) = rest.split_at_checked(12) else {
        return false;
    };
    let Some(path) = rest.strip_prefix(":role/") else {
        return false;
    };
    if !is_digits(account, 12) {
        return false;
    }
    // The word class excludes '/' and ':', so splitting on them is unambiguous.
    let segments: Vec<&str> = path.split(['/', ':']).collect();
    let Some((name, prefixes)) = segments.split_last() else {
        return false;
    };
    let word =
        |seg: &str, max: usize| (1..=max).contains(&seg.len()) && seg.chars().all(is_arn_word);
    prefixes.iter().all(|seg| word(seg, 512)) && word(name, 64)
}

/// `^arn:(aws|aws-cn|aws-us-gov):[a-zA-Z0-9-]+:[a-zA-Z0-9-]*:\d{12}:([\w+=,.@-]+[/:])*[\w+=,.@-]+$`
pub fn is_arn(s: &str) -> bool {
    let Some(rest) = s.strip_prefix("arn:").and_then(strip_partition) else {
        return false;
    };
    let parts: Vec<&str> = rest.splitn(4, ':').collect();
    let [service, region, account, resource] = parts.as_slice() else {
        return false;
    };
    let service_char = |c: char| c.is_ascii_alphanumeric() || c == '-';
    !service.is_empty()
        && service.chars().all(service_char)
        && region.chars().all(service_char)
        && is_digits(account, 12)
        && resource
            .split(['/', ':'])
            .all(|seg| !seg.is_empty() && seg.chars().all(is_arn_word))
}

#[cfg(test)]
mod tests {
    use super::super::error::ErrorKind;
    use super::*;
    use serde_json::json;

    fn obj(value: Value) -> Object {
        match value {
            Value::Object(o) => o,
            _ => panic!("not an object"),
        }
    }

    fn validation_message(result: Result<impl std::fmt::Debug, ApiError>) -> String {
        let err = result.unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation, "{err}");
        err.message
    }

    #[test]
    fn patterns() {
        assert!(is_connection_id("2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f6"));
        assert!(!is_connection_id("2F6C1E2A-0B1C-4D5E-8F90-A1B2C3D4E5F6"));
        assert!(!is_connection_id("2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f"));
        assert!(!is_connection_id("not-an-id"));

        assert!(is_account_id("111122223333"));
        assert!(!is_account_id("11112222333"));
        assert!(!is_account_id("11112222333a"));

        assert!(is_resource_name("prod-eu_1"));
        assert!(is_resource_name("a"));
        assert!(!is_resource_name("-prod"));
        assert!(!is_resource_name("_prod"));
        assert!(!is_resource_name("prod eu"));
        assert!(!is_resource_name(""));

        assert!(is_role_arn("arn:aws:iam::444455556666:role/proton-env"));
        assert!(is_role_arn(
            "arn:aws-cn:iam::444455556666:role/path/to/r+=,.@-_"
        ));
        assert!(is_role_arn("arn:aws-us-gov:iam::444455556666:role/a:b"));
        assert!(!is_role_arn("arn:aws:iam::444455556666:user/x"));
        assert!(!is_role_arn("arn:aws:iam::44445555666:role/x"));
        assert!(!is_role_arn("arn:aws:iam::444455556666:role/"));
        assert!(!is_role_arn("arn:aws:iam::444455556666:role/a//b"));
        assert!(!is_role_arn(&format!(
            "arn:aws:iam::444455556666:role/{}",
            "x".repeat(65)
        )));
        assert!(is_role_arn(&format!(
            "arn:aws:iam::444455556666:role/{}/x",
            "x".repeat(512)
        )));
        assert!(!is_role_arn("arn:aws-xx:iam::444455556666:role/x"));

        assert!(is_arn(
            "arn:aws:proton:us-east-1:444455556666:environment-account-connection/2f6c1e2a-0b1c-4d5e-8f90-a1b2c3d4e5f6"
        ));
        assert!(is_arn("arn:aws:iam::444455556666:role/x"));
        assert!(!is_arn("arn:aws::us-east-1:444455556666:x"));
        assert!(!is_arn("arn:aws:proton:us-east-1:444455556666:"));
        assert!(!is_arn("arn:aws:proton:us_east_1:444455556666:x"));
        assert!(!is_arn("arn:aws:proton:us-east-1:444455556666:a/"));
        assert!(!is_arn("not an arn"));
    }

    #[test]
    fn empty_body_is_an_empty_object_and_junk_is_a_serialization_error() {
        assert!(parse_body(b"").unwrap().is_empty());
        assert!(parse_body(b" \n").unwrap().is_empty());
        assert_eq!(
            parse_body(b"{nope").unwrap_err().kind,
            ErrorKind::Serialization
        );
        assert_eq!(
            parse_body(b"[1]").unwrap_err().kind,
            ErrorKind::Serialization
        );
    }

    #[test]
    fn create_reports_every_violation_naming_the_fields() {
        let message = validation_message(create_input(&obj(json!({
            "environmentName": "-bad",
            "managementAccountId": "123",
            "roleArn": "arn:aws:iam::444455556666:user/x",
            "clientToken": "x".repeat(65),
            "tags": [{"key": "", "value": "v"}, {"key": "k"}],
        }))));
        assert!(
            message.starts_with("6 validation errors detected: "),
            "{message}"
        );
        for at in [
            "'environmentName'",
            "'managementAccountId'",
            "'roleArn'",
            "'clientToken'",
            "'tags.1.member.key'",
            "'tags.2.member.value'",
        ] {
            assert!(message.contains(at), "{at} missing from {message}");
        }
        assert!(message.contains("Member must not be null"), "{message}");
    }

    #[test]
    fn create_requires_environment_and_account() {
        let message = validation_message(create_input(&Object::new()));
        assert_eq!(
            message,
            "2 validation errors detected: Value null at 'environmentName' failed to satisfy \
             constraint: Member must not be null; Value null at 'managementAccountId' failed to \
             satisfy constraint: Member must not be null"
        );
    }

    #[test]
    fn create_reads_a_valid_request() {
        let req = create_input(&obj(json!({
            "environmentName": "prod-eu",
            "managementAccountId": "111122223333",
            "componentRoleArn": "arn:aws:iam::444455556666:role/c",
            "clientToken": "uid-1",
            "tags": [{"key": "team", "value": ""}],
            "unknownMember": 1,
        })))
        .unwrap();
        assert_eq!(req.environment_name, "prod-eu");
        assert_eq!(req.client_token.as_deref(), Some("uid-1"));
        assert_eq!(req.role_arn, None);
        assert_eq!(req.tags, vec![("team".to_string(), String::new())]);
    }

    #[test]
    fn client_token_must_be_printable_ascii() {
        let message = validation_message(create_input(&obj(json!({
            "environmentName": "e",
            "managementAccountId": "111122223333",
            "clientToken": "has space",
        }))));
        assert!(message.contains("'clientToken'"), "{message}");
        assert!(message.contains("^[!-~]*$"), "{message}");
    }

    #[test]
    fn wrong_json_types_are_serialization_errors() {
        let err = create_input(&obj(json!({"environmentName": 5}))).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Serialization);
        assert!(err.message.contains("'environmentName'"), "{}", err.message);
        let err = list_input(&obj(
            json!({"requestedBy": "ENVIRONMENT_ACCOUNT", "maxResults": "3"}),
        ))
        .unwrap_err();
        assert_eq!(err.kind, ErrorKind::Serialization);
    }

    #[test]
    fn list_checks_enums_bounds_and_token() {
        let message = validation_message(list_input(&obj(json!({
            "requestedBy": "SOMEONE",
            "statuses": ["PENDING", "GONE"],
            "maxResults": 0,
            "nextToken": "not valid!",
        }))));
        assert!(message.starts_with("4 validation errors"), "{message}");
        for at in [
            "'requestedBy'",
            "'statuses.2.member'",
            "'maxResults'",
            "'nextToken'",
        ] {
            assert!(message.contains(at), "{at} missing from {message}");
        }
        let message = validation_message(list_input(&obj(json!({
            "requestedBy": "ENVIRONMENT_ACCOUNT",
            "maxResults": 101,
        }))));
        assert!(message.contains("less than or equal to 100"), "{message}");
        let message = validation_message(list_input(&Object::new()));
        assert!(message.contains("'requestedBy'"), "{message}");

        let req = list_input(&obj(json!({"requestedBy": "MANAGEMENT_ACCOUNT"}))).unwrap();
        assert_eq!(req.max_results, 100);
        assert_eq!(req.requested_by, RequestedBy::ManagementAccount);
        let req = list_input(&obj(json!({"requestedBy": "ENVIRONMENT_ACCOUNT"}))).unwrap();
        assert_eq!(req.requested_by, RequestedBy::EnvironmentAccount);
    }

    #[test]
    fn tag_requests_are_bounded() {
        let arn = "arn:aws:proton:us-east-1:444455556666:environment-account-connection/x";
        let tags: Vec<Value> = (0..51)
            .map(|i| json!({"key": format!("k{i}"), "value": "v"}))
            .collect();
        let message =
            validation_message(tag_input(&obj(json!({"resourceArn": arn, "tags": tags}))));
        assert!(message.contains("'tags'"), "{message}");

        let message = validation_message(tag_input(&obj(json!({
            "resourceArn": arn,
            "tags": [{"key": "k".repeat(129), "value": "v".repeat(257)}],
        }))));
        assert!(message.contains("less than or equal to 128"), "{message}");
        assert!(message.contains("less than or equal to 256"), "{message}");

        let message = validation_message(untag_input(&obj(json!({"resourceArn": "arn:nope"}))));
        assert!(message.contains("'resourceArn'"), "{message}");
        assert!(message.contains("'tagKeys'"), "{message}");

        let (got_arn, keys) =
            untag_input(&obj(json!({"resourceArn": arn, "tagKeys": ["a"]}))).unwrap();
        assert_eq!((got_arn.as_str(), keys), (arn, vec!["a".to_string()]));
    }

    #[test]
    fn ids_must_match_the_model_pattern() {
        let message = validation_message(id_input(&obj(json!({"id": "ABC"}))));
        assert!(message.contains("Value 'ABC' at 'id'"), "{message}");
        assert!(validation_message(id_input(&Object::new())).contains("Value null at 'id'"));
    }
}
