//! The emulator's state machine: connections, tags and client tokens, as plain data.
//!
//! No I/O and no clock: callers pass `now` (epoch milliseconds) so that every rule here can be
//! tested synchronously. Inputs are already validated against the model (see `validate`); this
//! module only decides what the service does with them.

use std::collections::{BTreeMap, HashMap};

use super::error::ApiError;

/// Epoch milliseconds.
pub type Millis = i64;

/// The `EnvironmentAccountConnectionStatus` enum of the model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    Pending,
    Connected,
    Rejected,
}

impl Status {
    pub const ALL: [Status; 3] = [Status::Pending, Status::Connected, Status::Rejected];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Pending => "PENDING",
            Status::Connected => "CONNECTED",
            Status::Rejected => "REJECTED",
        }
    }

    pub fn parse(s: &str) -> Option<Status> {
        Status::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// One environment account connection, as the service keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Connection {
    pub id: String,
    pub arn: String,
    pub environment_name: String,
    pub management_account_id: String,
    pub environment_account_id: String,
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
    pub status: Status,
    pub requested_at: Millis,
    pub last_modified_at: Millis,
    /// The token of the Create that made it; freed again when the connection is deleted.
    pub client_token: Option<String>,
}

impl Connection {
    /// Listing order: oldest first, ties broken by id, so pages never shift.
    fn sort_key(&self) -> (Millis, &str) {
        (self.requested_at, &self.id)
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateRequest {
    pub client_token: Option<String>,
    pub environment_name: String,
    pub management_account_id: String,
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
    pub tags: Vec<(String, String)>,
}

/// Absent roles are left as they are: the API has no way to clear one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UpdateRequest {
    pub id: String,
    pub role_arn: Option<String>,
    pub codebuild_role_arn: Option<String>,
    pub component_role_arn: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListRequest {
    pub environment_name: Option<String>,
    /// Empty means every status.
    pub statuses: Vec<Status>,
    pub max_results: usize,
    pub next_token: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ListTagsRequest {
    pub resource_arn: String,
    pub max_results: usize,
    pub next_token: Option<String>,
}

/// One page of a listing; `next_token` is set only when more items follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

/// The model allows at most this many tags on one resource.
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

/// Everything the emulator knows, for one account in one region.
#[derive(Debug)]
pub struct Store {
    account_id: String,
    region: String,
    max_connections: Option<usize>,
    connections: BTreeMap<String, Connection>,
    /// Per resource ARN; an entry exists exactly while its connection does.
    tags: BTreeMap<String, BTreeMap<String, String>>,
    /// clientToken -> connection id.
    tokens: HashMap<String, String>,
    /// Last timestamp handed out, so that every change gets a strictly later timestamp even when
    /// the wall clock has not moved (or moved back): "lastModifiedAt changed" is then reliable.
    clock: Millis,
}

impl Store {
    pub fn new(account_id: &str, region: &str, max_connections: Option<usize>) -> Store {
        Store {
            account_id: account_id.to_string(),
            region: region.to_string(),
            max_connections,
            connections: BTreeMap::new(),
            tags: BTreeMap::new(),
            tokens: HashMap::new(),
            clock: 0,
        }
    }

    fn tick(&mut self, now: Millis) -> Millis {
        self.clock = now.max(self.clock + 1);
        self.clock
    }

    fn arn_for(&self, id: &str) -> String {
        format!(
            "arn:aws:proton:{}:{}:environment-account-connection/{id}",
            self.region, self.account_id
        )
    }

    fn new_id(&self) -> String {
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            if !self.connections.contains_key(&id) {
                return id;
            }
        }
    }

    fn existing(&self, id: &str) -> Result<&Connection, ApiError> {
        self.connections.get(id).ok_or_else(|| not_found(id))
    }

    fn existing_mut(&mut self, id: &str) -> Result<&mut Connection, ApiError> {
        self.connections.get_mut(id).ok_or_else(|| not_found(id))
    }

    pub fn create(&mut self, req: CreateRequest, now: Millis) -> Result<Connection, ApiError> {
        // A retried Create must not make a second connection: the token names the first one.
        if let Some(token) = &req.client_token
            && let Some(id) = self.tokens.get(token)
            && let Some(existing) = self.connections.get(id)
        {
            return Ok(existing.clone());
        }
        if let Some(clash) = self.connections.values().find(|c| {
            c.status != Status::Rejected
                && c.management_account_id == req.management_account_id
                && c.environment_name == req.environment_name
        }) {
            return Err(ApiError::conflict(format!(
                "An environment account connection for environment '{}' and management account \
                 '{}' already exists (id {}, status {})",
                clash.environment_name,
                clash.management_account_id,
                clash.id,
                clash.status.as_str()
            )));
        }
        if let Some(max) = self.max_connections
            && self.connections.len() >= max
        {
            return Err(ApiError::new(
                super::error::ErrorKind::ServiceQuotaExceeded,
                format!(
                    "The quota of {max} environment account connections in account {} is reached",
                    self.account_id
                ),
            ));
        }

        let id = self.new_id();
        let at = self.tick(now);
        let connection = Connection {
            arn: self.arn_for(&id),
            id: id.clone(),
            environment_name: req.environment_name,
            management_account_id: req.management_account_id,
            environment_account_id: self.account_id.clone(),
            role_arn: req.role_arn,
            codebuild_role_arn: req.codebuild_role_arn,
            component_role_arn: req.component_role_arn,
            status: Status::Pending,
            requested_at: at,
            last_modified_at: at,
            client_token: req.client_token,
        };
        if let Some(token) = &connection.client_token {
            self.tokens.insert(token.clone(), id.clone());
        }
        self.tags
            .insert(connection.arn.clone(), req.tags.into_iter().collect());
        self.connections.insert(id, connection.clone());
        Ok(connection)
    }

    pub fn get(&self, id: &str) -> Result<Connection, ApiError> {
        self.existing(id).cloned()
    }

    pub fn update(&mut self, req: UpdateRequest, now: Millis) -> Result<Connection, ApiError> {
        let current = self.existing(&req.id)?;
        if current.status == Status::Rejected {
            return Err(ApiError::conflict(format!(
                "Environment account connection {} is REJECTED and cannot be updated",
                req.id
            )));
        }
        // The request states the connection's complete set of optional roles: an absent
        // codebuild or component role is cleared (the only way the API can remove one). The
        // service role is required on every connection, so an absent roleArn keeps it.
        let mut next = current.clone();
        if req.role_arn.is_some() {
            next.role_arn = req.role_arn;
        }
        next.codebuild_role_arn = req.codebuild_role_arn;
        next.component_role_arn = req.component_role_arn;
        if next != *current {
            next.last_modified_at = self.tick(now);
        }
        self.connections.insert(req.id, next.clone());
        Ok(next)
    }

    pub fn delete(&mut self, id: &str) -> Result<Connection, ApiError> {
        let connection = self.connections.remove(id).ok_or_else(|| not_found(id))?;
        self.tags.remove(&connection.arn);
        if let Some(token) = &connection.client_token {
            self.tokens.remove(token);
        }
        Ok(connection)
    }

    pub fn accept(&mut self, id: &str, now: Millis) -> Result<Connection, ApiError> {
        let status = self.existing(id)?.status;
        if status != Status::Pending {
            return Err(ApiError::conflict(format!(
                "Environment account connection {id} is {} and cannot be accepted: only a PENDING \
                 connection can be accepted",
                status.as_str()
            )));
        }
        self.set_status(id, Status::Connected, now)
    }

    pub fn reject(&mut self, id: &str, now: Millis) -> Result<Connection, ApiError> {
        let status = self.existing(id)?.status;
        if status == Status::Rejected {
            return Err(ApiError::conflict(format!(
                "Environment account connection {id} is already REJECTED"
            )));
        }
        self.set_status(id, Status::Rejected, now)
    }

    fn set_status(
        &mut self,
        id: &str,
        status: Status,
        now: Millis,
    ) -> Result<Connection, ApiError> {
        let at = self.tick(now);
        let connection = self.existing_mut(id)?;
        connection.status = status;
        connection.last_modified_at = at;
        Ok(connection.clone())
    }

    /// Every live connection, in listing order.
    pub fn all(&self) -> Vec<Connection> {
        let mut all: Vec<Connection> = self.connections.values().cloned().collect();
        all.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        all
    }

    pub fn list(&self, req: &ListRequest) -> Result<Page<Connection>, ApiError> {
        let after = match &req.next_token {
            Some(token) => Some(decode_list_token(token)?),
            None => None,
        };
        let matching = self.all().into_iter().filter(|c| {
            req.environment_name
                .as_ref()
                .is_none_or(|name| *name == c.environment_name)
                && (req.statuses.is_empty() || req.statuses.contains(&c.status))
                && after
                    .as_ref()
                    .is_none_or(|(at, id)| c.sort_key() > (*at, id.as_str()))
        });
        Ok(paginate(matching, req.max_results, |c| {
            encode_token(&format!("{}/{}", c.requested_at, c.id))
        }))
    }

    pub fn tags_of(&self, arn: &str) -> BTreeMap<String, String> {
        self.tags.get(arn).cloned().unwrap_or_default()
    }

    fn tags_mut(&mut self, arn: &str) -> Result<&mut BTreeMap<String, String>, ApiError> {
        self.tags
            .get_mut(arn)
            .ok_or_else(|| ApiError::not_found(format!("Resource {arn} not found")))
    }

    pub fn tag(&mut self, arn: &str, tags: Vec<(String, String)>) -> Result<(), ApiError> {
        let current = self.tags_mut(arn)?;
        let mut next = current.clone();
        next.extend(tags);
        if next.len() > MAX_TAGS_PER_RESOURCE {
            return Err(ApiError::validation(format!(
                "Resource {arn} would have {} tags; at most {MAX_TAGS_PER_RESOURCE} are allowed",
                next.len()
            )));
        }
        *current = next;
        Ok(())
    }

    pub fn untag(&mut self, arn: &str, keys: &[String]) -> Result<(), ApiError> {
        let current = self.tags_mut(arn)?;
        for key in keys {
            current.remove(key);
        }
        Ok(())
    }

    pub fn list_tags(&self, req: &ListTagsRequest) -> Result<Page<(String, String)>, ApiError> {
        let tags = self.tags.get(&req.resource_arn).ok_or_else(|| {
            ApiError::not_found(format!("Resource {} not found", req.resource_arn))
        })?;
        let after = match &req.next_token {
            Some(token) => Some(decode_token(token).ok_or_else(|| invalid_token(token))?),
            None => None,
        };
        let matching = tags
            .iter()
            .filter(|(key, _)| after.as_ref().is_none_or(|after| *key > after))
            .map(|(k, v)| (k.clone(), v.clone()));
        Ok(paginate(matching, req.max_results, |(key, _)| {
            encode_token(key)
        }))
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!(
        "Environment account connection {id} could not be found"
    ))
}

/// Takes one page from `items` (already past the previous page); the token names the last item
/// returned, so a page boundary survives deletions in between.
fn paginate<T>(
    mut items: impl Iterator<Item = T>,
    max_results: usize,
    token_for: impl Fn(&T) -> String,
) -> Page<T> {
    let page: Vec<T> = items.by_ref().take(max_results.max(1)).collect();
    let next_token = match (page.last(), items.next()) {
        (Some(last), Some(_)) => Some(token_for(last)),
        _ => None,
    };
    Page {
        items: page,
        next_token,
    }
}

/// Tokens are hex, so they are opaque enough and match the model's `^[A-Za-z0-9+=/]+$`.
fn encode_token(position: &str) -> String {
    position.bytes().map(|b| format!("{b:02x}")).collect()
}

fn decode_token(token: &str) -> Option<String> {
    if token.is_empty() || !token.len().is_multiple_of(2) {
        return None;
    }
    let bytes = (0..token.len())
        .step_by(2)
        .map(|i| {
            token
                .get(i..i + 2)
                .and_then(|pair| u8::from_str_radix(pair, 16).ok())
        })
        .collect::<Option<Vec<u8>>>()?;
    String::from_utf8(bytes).ok()
}

fn decode_list_token(token: &str) -> Result<(Millis, String), ApiError> {
    decode_token(token)
        .and_then(|position| {
            let (at, id) = position.split_once('/')?;
            Some((at.parse().ok()?, id.to_string()))
        })
        .ok_or_else(|| invalid_token(token))
}

fn invalid_token(token: &str) -> ApiError {
    ApiError::validation(format!("The nextToken '{token}' is not valid"))
}

#[cfg(test)]
mod tests {
    use super::super::error::ErrorKind;
    use super::*;

    const MGMT: &str = "111122223333";

    fn store() -> Store {
        Store::new("444455556666", "us-east-1", None)
    }

    fn create(env: &str, token: Option<&str>) -> CreateRequest {
        CreateRequest {
            client_token: token.map(str::to_string),
            environment_name: env.to_string(),
            management_account_id: MGMT.to_string(),
            role_arn: Some("arn:aws:iam::444455556666:role/env".to_string()),
            ..CreateRequest::default()
        }
    }

    fn list_all(max_results: usize) -> ListRequest {
        ListRequest {
            environment_name: None,
            statuses: vec![],
            max_results,
            next_token: None,
        }
    }

    #[test]
    fn create_makes_a_pending_connection_in_this_account() {
        let mut s = store();
        let c = s.create(create("dev", None), 1_000).unwrap();
        assert_eq!(c.status, Status::Pending);
        assert_eq!(c.environment_account_id, "444455556666");
        assert_eq!(
            c.arn,
            format!(
                "arn:aws:proton:us-east-1:444455556666:environment-account-connection/{}",
                c.id
            )
        );
        assert!(uuid::Uuid::parse_str(&c.id).is_ok());
        assert_eq!(c.id, c.id.to_lowercase());
        assert_eq!((c.requested_at, c.last_modified_at), (1_000, 1_000));
    }

    #[test]
    fn same_token_returns_the_first_connection_until_it_is_deleted() {
        let mut s = store();
        let first = s.create(create("dev", Some("t1")), 1).unwrap();
        let again = s.create(create("dev", Some("t1")), 2).unwrap();
        assert_eq!(first, again);
        assert_eq!(s.all().len(), 1);

        s.delete(&first.id).unwrap();
        let fresh = s.create(create("dev", Some("t1")), 3).unwrap();
        assert_ne!(fresh.id, first.id);
    }

    #[test]
    fn same_environment_with_another_token_is_a_conflict_unless_rejected() {
        let mut s = store();
        let first = s.create(create("dev", Some("a")), 1).unwrap();
        let err = s.create(create("dev", Some("b")), 2).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(err.message.contains(&first.id), "{}", err.message);
        assert_eq!(
            s.create(create("dev", None), 3).unwrap_err().kind,
            ErrorKind::Conflict
        );

        s.reject(&first.id, 4).unwrap();
        assert!(s.create(create("dev", Some("b")), 5).is_ok());
    }

    #[test]
    fn quota_counts_live_connections() {
        let mut s = Store::new("444455556666", "us-east-1", Some(1));
        let first = s.create(create("a", Some("t")), 1).unwrap();
        let err = s.create(create("b", None), 2).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ServiceQuotaExceeded);
        // A token replay is not a new connection, so it is not refused.
        assert_eq!(s.create(create("a", Some("t")), 3).unwrap().id, first.id);
        s.delete(&first.id).unwrap();
        assert!(s.create(create("b", None), 3).is_ok());
    }

    #[test]
    fn status_machine() {
        let mut s = store();
        let c = s.create(create("dev", None), 1).unwrap();
        let accepted = s.accept(&c.id, 2).unwrap();
        assert_eq!(accepted.status, Status::Connected);
        assert!(accepted.last_modified_at > c.last_modified_at);
        assert_eq!(s.accept(&c.id, 3).unwrap_err().kind, ErrorKind::Conflict);
        assert_eq!(s.reject(&c.id, 4).unwrap().status, Status::Rejected);
        let err = s.accept(&c.id, 5).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(err.message.contains("REJECTED"), "{}", err.message);
        assert_eq!(s.reject(&c.id, 6).unwrap_err().kind, ErrorKind::Conflict);
        let update = UpdateRequest {
            id: c.id.clone(),
            role_arn: Some("arn:aws:iam::444455556666:role/x".into()),
            ..UpdateRequest::default()
        };
        assert_eq!(s.update(update, 7).unwrap_err().kind, ErrorKind::Conflict);
    }

    #[test]
    fn update_replaces_optional_roles_keeps_service_role_and_bumps_time_only_on_change() {
        let mut s = store();
        let c = s.create(create("dev", None), 10).unwrap();
        let same = s
            .update(
                UpdateRequest {
                    id: c.id.clone(),
                    role_arn: c.role_arn.clone(),
                    ..UpdateRequest::default()
                },
                20,
            )
            .unwrap();
        assert_eq!(same, c);
        let changed = s
            .update(
                UpdateRequest {
                    id: c.id.clone(),
                    component_role_arn: Some("arn:aws:iam::444455556666:role/comp".into()),
                    ..UpdateRequest::default()
                },
                5, // the wall clock went back: the timestamp still moves forward
            )
            .unwrap();
        assert_eq!(changed.role_arn, c.role_arn);
        assert_eq!(
            changed.component_role_arn.as_deref(),
            Some("arn:aws:iam::444455556666:role/comp")
        );
        assert!(changed.last_modified_at > c.last_modified_at);
    }

    #[test]
    fn unknown_ids_are_not_found() {
        let mut s = store();
        let id = "00000000-0000-4000-8000-000000000000";
        assert_eq!(s.get(id).unwrap_err().kind, ErrorKind::ResourceNotFound);
        assert_eq!(s.delete(id).unwrap_err().kind, ErrorKind::ResourceNotFound);
        assert_eq!(
            s.accept(id, 1).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        assert_eq!(
            s.reject(id, 1).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        let update = UpdateRequest {
            id: id.into(),
            ..UpdateRequest::default()
        };
        assert_eq!(
            s.update(update, 1).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
    }

    #[test]
    fn list_pages_cover_every_connection_once_in_creation_order() {
        let mut s = store();
        let ids: Vec<String> = (0..7)
            .map(|i| s.create(create(&format!("env{i}"), None), 100).unwrap().id)
            .collect();
        let mut seen = vec![];
        let mut req = list_all(3);
        let mut pages = 0;
        loop {
            let page = s.list(&req).unwrap();
            pages += 1;
            seen.extend(page.items.into_iter().map(|c| c.id));
            match page.next_token {
                Some(token) => {
                    assert!(token.chars().all(|c| c.is_ascii_alphanumeric()));
                    req.next_token = Some(token);
                }
                None => break,
            }
        }
        assert_eq!(pages, 3);
        assert_eq!(seen, ids);
    }

    #[test]
    fn list_page_that_ends_exactly_has_no_token() {
        let mut s = store();
        for i in 0..3 {
            s.create(create(&format!("env{i}"), None), 1).unwrap();
        }
        let page = s.list(&list_all(3)).unwrap();
        assert_eq!(page.items.len(), 3);
        assert_eq!(page.next_token, None);
    }

    #[test]
    fn list_filters_by_environment_and_status() {
        let mut s = store();
        let a = s.create(create("a", None), 1).unwrap();
        let b = s.create(create("b", None), 1).unwrap();
        s.accept(&b.id, 2).unwrap();
        let by_env = ListRequest {
            environment_name: Some("a".into()),
            ..list_all(100)
        };
        assert_eq!(s.list(&by_env).unwrap().items, vec![a.clone()]);
        let by_status = ListRequest {
            statuses: vec![Status::Connected, Status::Rejected],
            ..list_all(100)
        };
        let connected: Vec<String> = s
            .list(&by_status)
            .unwrap()
            .items
            .into_iter()
            .map(|c| c.id)
            .collect();
        assert_eq!(connected, vec![b.id]);
    }

    #[test]
    fn bad_list_token_is_a_validation_error() {
        let s = store();
        for token in ["zz", "abc", "6869"] {
            let req = ListRequest {
                next_token: Some(token.into()),
                ..list_all(10)
            };
            assert_eq!(
                s.list(&req).unwrap_err().kind,
                ErrorKind::Validation,
                "{token}"
            );
        }
    }

    #[test]
    fn tags_follow_their_connection() {
        let mut s = store();
        let mut req = create("dev", None);
        req.tags = vec![("team".into(), "payments".into())];
        let c = s.create(req, 1).unwrap();
        assert_eq!(
            s.tags_of(&c.arn).get("team").map(String::as_str),
            Some("payments")
        );

        s.tag(
            &c.arn,
            vec![
                ("tier".into(), "gold".into()),
                ("team".into(), "core".into()),
            ],
        )
        .unwrap();
        s.untag(&c.arn, &["tier".into(), "absent".into()]).unwrap();
        let tags = s.tags_of(&c.arn);
        assert_eq!(tags.len(), 1);
        assert_eq!(tags.get("team").map(String::as_str), Some("core"));

        s.delete(&c.id).unwrap();
        assert!(s.tags_of(&c.arn).is_empty());
        assert_eq!(
            s.tag(&c.arn, vec![]).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        assert_eq!(
            s.untag(&c.arn, &[]).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
    }

    #[test]
    fn at_most_fifty_tags_on_a_resource() {
        let mut s = store();
        let c = s.create(create("dev", None), 1).unwrap();
        let forty: Vec<(String, String)> =
            (0..40).map(|i| (format!("k{i}"), String::new())).collect();
        s.tag(&c.arn, forty).unwrap();
        let eleven: Vec<(String, String)> = (100..111)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let err = s.tag(&c.arn, eleven).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation);
        assert_eq!(
            s.tags_of(&c.arn).len(),
            40,
            "a refused TagResource changes nothing"
        );
        // Overwriting existing keys does not count twice.
        let same: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
        s.tag(&c.arn, same).unwrap();
    }

    #[test]
    fn list_tags_pages() {
        let mut s = store();
        let c = s.create(create("dev", None), 1).unwrap();
        s.tag(
            &c.arn,
            (0..5).map(|i| (format!("k{i}"), format!("v{i}"))).collect(),
        )
        .unwrap();
        let mut req = ListTagsRequest {
            resource_arn: c.arn.clone(),
            max_results: 2,
            next_token: None,
        };
        let mut keys = vec![];
        loop {
            let page = s.list_tags(&req).unwrap();
            keys.extend(page.items.into_iter().map(|(k, _)| k));
            match page.next_token {
                Some(t) => req.next_token = Some(t),
                None => break,
            }
        }
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
    }
}
