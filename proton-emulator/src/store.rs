//! The emulator's state machine: connections, tags and client tokens, as plain data.
//!
//! No I/O and no clock: callers pass `now` (epoch milliseconds) so that every rule here can be
//! tested synchronously. Inputs are already validated against the model (see `validate`); this
//! module only decides what the service does with them.
//!
//! AWS keeps connections per region, and so does the store: every operation names the region it
//! is served in, and a connection, its tags and its client token exist only in the region of its
//! Create. Connection ids are unique across regions, so the test helpers can find one by id.
//!
//! Connections of every account live side by side: a connection belongs to the environment
//! account that created it (client tokens, the one-per-environment rule and the quota are that
//! account's), and its management account reaches it by id. Who may do what to a connection is
//! decided before the store is asked (see `access`): the store only keeps the facts.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use super::error::ApiError;
pub use super::requests::{
    CreateRequest, ListRequest, ListTagsRequest, RequestedBy, Status, UpdateRequest,
};
use super::settings::Idempotency;
use super::validate;

/// Epoch milliseconds.
pub type Millis = i64;

/// One environment account connection, as the service keeps it (and as the state file holds it).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Connection {
    pub id: String,
    pub arn: String,
    /// The region of its Create; also in the ARN.
    pub region: String,
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

/// One page of a listing; `next_token` is set only when more items follow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_token: Option<String>,
}

/// The model allows at most this many tags on one resource.
pub const MAX_TAGS_PER_RESOURCE: usize = 50;

/// A client token in use: the connection it made and the Create that made it, so a replay can be
/// compared with the original request (strict idempotency).
#[derive(Debug)]
struct TokenUse {
    id: String,
    request: CreateRequest,
}

/// A deleted connection that List still shows until `deleted_at + list_lag`.
#[derive(Debug)]
struct Deleted {
    connection: Connection,
    deleted_at: Millis,
}

/// Everything one region holds.
#[derive(Debug, Default)]
struct Region {
    connections: BTreeMap<String, Connection>,
    /// Per resource ARN; an entry exists exactly while its connection does.
    tags: BTreeMap<String, BTreeMap<String, String>>,
    /// (environment account, clientToken) -> its use: AWS scopes tokens to the caller's account.
    /// Freed when the connection is deleted.
    tokens: HashMap<(String, String), TokenUse>,
    /// Kept only while a list lag is set, and only as long as List may still show them.
    deleted: Vec<Deleted>,
}

impl Region {
    fn forget_deleted_before(&mut self, now: Millis, lag: Millis) {
        self.deleted
            .retain(|d| lag > 0 && now < d.deleted_at.saturating_add(lag));
    }
}

/// A live connection with everything kept about it: what the state file holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StoredConnection {
    pub connection: Connection,
    pub tags: BTreeMap<String, String>,
    /// The Create that made it, while its client token is in use (strict idempotency compares
    /// a replay with it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_request: Option<CreateRequest>,
}

/// Everything the emulator knows about connections, for every account in every region.
#[derive(Debug)]
pub struct Store {
    /// Live connections allowed at once per account and region (AWS quotas are per account and
    /// region).
    max_connections: Option<usize>,
    idempotency: Idempotency,
    /// How long List takes to reflect a Create or a Delete; 0 = at once.
    list_lag: Millis,
    regions: BTreeMap<String, Region>,
    /// Last timestamp handed out, so that every change gets a strictly later timestamp even when
    /// the wall clock has not moved (or moved back): "lastModifiedAt changed" is then reliable.
    clock: Millis,
}

impl Store {
    pub fn new(max_connections: Option<usize>) -> Store {
        Store {
            max_connections,
            idempotency: Idempotency::default(),
            list_lag: 0,
            regions: BTreeMap::new(),
            clock: 0,
        }
    }

    pub fn set_idempotency(&mut self, idempotency: Idempotency) {
        self.idempotency = idempotency;
    }

    /// A lag applies to changes made while it is set: deletions made without one are forgotten
    /// at once and do not come back when a lag is set later.
    pub fn set_list_lag(&mut self, lag: Millis) {
        self.list_lag = lag.max(0);
    }

    fn tick(&mut self, now: Millis) -> Millis {
        self.clock = now.max(self.clock + 1);
        self.clock
    }

    /// Unique across regions (deleted connections included), so an id names one connection.
    fn new_id(&self) -> String {
        loop {
            let id = uuid::Uuid::new_v4().to_string();
            let taken = self.regions.values().any(|r| {
                r.connections.contains_key(&id) || r.deleted.iter().any(|d| d.connection.id == id)
            });
            if !taken {
                return id;
            }
        }
    }

    /// A connection of another region is as unknown as one that never existed.
    fn existing(&self, region: &str, id: &str) -> Result<&Connection, ApiError> {
        self.regions
            .get(region)
            .and_then(|r| r.connections.get(id))
            .ok_or_else(|| not_found(id))
    }

    fn existing_mut(&mut self, region: &str, id: &str) -> Result<&mut Connection, ApiError> {
        self.regions
            .get_mut(region)
            .and_then(|r| r.connections.get_mut(id))
            .ok_or_else(|| not_found(id))
    }

    /// The region a connection lives in, for the test helpers that act by id alone.
    pub fn region_of(&self, id: &str) -> Option<&str> {
        self.regions
            .iter()
            .find(|(_, r)| r.connections.contains_key(id))
            .map(|(name, _)| name.as_str())
    }

    /// Creates a connection of `account` (the caller's: the environment account).
    pub fn create(
        &mut self,
        region: &str,
        account: &str,
        req: CreateRequest,
        now: Millis,
    ) -> Result<Connection, ApiError> {
        let here = self.regions.get(region);
        // A retried Create must not make a second connection: the token names the first one.
        if let Some(token) = &req.client_token
            && let Some(used) =
                here.and_then(|r| r.tokens.get(&(account.to_string(), token.clone())))
            && let Some(existing) = here.and_then(|r| r.connections.get(&used.id))
        {
            let differences = match self.idempotency {
                Idempotency::Lenient => vec![],
                Idempotency::Strict => used.request.differences(&req),
            };
            if !differences.is_empty() {
                return Err(ApiError::conflict(format!(
                    "The client token '{token}' was already used with different parameters \
                     (environment account connection {}; different: {}): use a new client \
                     token for a different request",
                    existing.id,
                    differences.join(", ")
                )));
            }
            return Ok(existing.clone());
        }
        let live = || {
            here.into_iter()
                .flat_map(|r| r.connections.values())
                .filter(|c| c.environment_account_id == account)
        };
        if let Some(clash) = live().find(|c| {
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
            && live().count() >= max
        {
            return Err(ApiError::new(
                super::error::ErrorKind::ServiceQuotaExceeded,
                format!(
                    "The quota of {max} environment account connections in account {account} and \
                     region {region} is reached"
                ),
            ));
        }

        let id = self.new_id();
        let at = self.tick(now);
        let connection = Connection {
            arn: connection_arn(region, account, &id),
            id: id.clone(),
            region: region.to_string(),
            environment_name: req.environment_name.clone(),
            management_account_id: req.management_account_id.clone(),
            environment_account_id: account.to_string(),
            role_arn: req.role_arn.clone(),
            codebuild_role_arn: req.codebuild_role_arn.clone(),
            component_role_arn: req.component_role_arn.clone(),
            status: Status::Pending,
            requested_at: at,
            last_modified_at: at,
            client_token: req.client_token.clone(),
        };
        let lag = self.list_lag;
        let here = self.regions.entry(region.to_string()).or_default();
        here.forget_deleted_before(now, lag);
        here.tags
            .insert(connection.arn.clone(), req.tags.iter().cloned().collect());
        if let Some(token) = &connection.client_token {
            here.tokens.insert(
                (account.to_string(), token.clone()),
                TokenUse {
                    id: id.clone(),
                    request: req,
                },
            );
        }
        here.connections.insert(id, connection.clone());
        Ok(connection)
    }

    pub fn get(&self, region: &str, id: &str) -> Result<Connection, ApiError> {
        self.existing(region, id).cloned()
    }

    /// [`Store::get`] without the copy, to look before acting.
    pub fn find(&self, region: &str, id: &str) -> Result<&Connection, ApiError> {
        self.existing(region, id)
    }

    pub fn update(
        &mut self,
        region: &str,
        req: UpdateRequest,
        now: Millis,
    ) -> Result<Connection, ApiError> {
        let current = self.existing(region, &req.id)?;
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
        *self.existing_mut(region, &req.id)? = next.clone();
        Ok(next)
    }

    pub fn delete(&mut self, region: &str, id: &str, now: Millis) -> Result<Connection, ApiError> {
        let lag = self.list_lag;
        let here = self.regions.get_mut(region).ok_or_else(|| not_found(id))?;
        let connection = here.connections.remove(id).ok_or_else(|| not_found(id))?;
        here.tags.remove(&connection.arn);
        if let Some(token) = &connection.client_token {
            here.tokens
                .remove(&(connection.environment_account_id.clone(), token.clone()));
        }
        here.forget_deleted_before(now, lag);
        if lag > 0 {
            here.deleted.push(Deleted {
                connection: connection.clone(),
                deleted_at: now,
            });
        }
        Ok(connection)
    }

    pub fn accept(&mut self, region: &str, id: &str, now: Millis) -> Result<Connection, ApiError> {
        let status = self.existing(region, id)?.status;
        if status != Status::Pending {
            return Err(ApiError::conflict(format!(
                "Environment account connection {id} is {} and cannot be accepted: only a PENDING \
                 connection can be accepted",
                status.as_str()
            )));
        }
        self.set_status(region, id, Status::Connected, now)
    }

    pub fn reject(&mut self, region: &str, id: &str, now: Millis) -> Result<Connection, ApiError> {
        let status = self.existing(region, id)?.status;
        if status == Status::Rejected {
            return Err(ApiError::conflict(format!(
                "Environment account connection {id} is already REJECTED"
            )));
        }
        self.set_status(region, id, Status::Rejected, now)
    }

    fn set_status(
        &mut self,
        region: &str,
        id: &str,
        status: Status,
        now: Millis,
    ) -> Result<Connection, ApiError> {
        let at = self.tick(now);
        let connection = self.existing_mut(region, id)?;
        connection.status = status;
        connection.last_modified_at = at;
        Ok(connection.clone())
    }

    /// Every live connection of every region, in listing order.
    pub fn all(&self) -> Vec<Connection> {
        let mut all: Vec<Connection> = self
            .regions
            .values()
            .flat_map(|r| r.connections.values().cloned())
            .collect();
        all.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        all
    }

    /// The connections of `region` that `listed` lets the caller see (its side of them, see
    /// `access`), as List sees them at `now`: with a list lag, a connection is listed from
    /// `requestedAt + lag` on, and a deleted one still is (as it was when deleted) until
    /// `deleted_at + lag`. So List shows the region as it was `lag` ago, while Get, which is
    /// strongly consistent, shows it as it is. Without a lag, List is strongly consistent too.
    pub fn list(
        &self,
        region: &str,
        req: &ListRequest,
        now: Millis,
        listed: impl Fn(&Connection) -> bool,
    ) -> Result<Page<Connection>, ApiError> {
        let after = match &req.next_token {
            Some(token) => Some(decode_list_token(token)?),
            None => None,
        };
        let lag = self.list_lag;
        let created_long_enough_ago = |c: &Connection| c.requested_at.saturating_add(lag) <= now;
        let mut visible: Vec<&Connection> = match self.regions.get(region) {
            None => vec![],
            Some(r) if lag == 0 => r.connections.values().collect(),
            Some(r) => r
                .connections
                .values()
                .filter(|c| created_long_enough_ago(c))
                .chain(
                    r.deleted
                        .iter()
                        .filter(|d| now < d.deleted_at.saturating_add(lag))
                        .map(|d| &d.connection)
                        .filter(|c| created_long_enough_ago(c)),
                )
                .collect(),
        };
        visible.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
        let matching = visible
            .into_iter()
            .filter(|c| {
                listed(c)
                    && req
                        .environment_name
                        .as_ref()
                        .is_none_or(|name| *name == c.environment_name)
                    && (req.statuses.is_empty() || req.statuses.contains(&c.status))
                    && after
                        .as_ref()
                        .is_none_or(|(at, id)| c.sort_key() > (*at, id.as_str()))
            })
            .cloned();
        Ok(paginate(matching, req.max_results, |c| {
            encode_token(&format!("{}/{}", c.requested_at, c.id))
        }))
    }

    /// The tags of a live connection, whatever its region (for the test helpers).
    pub fn tags_of(&self, arn: &str) -> BTreeMap<String, String> {
        self.regions
            .values()
            .find_map(|r| r.tags.get(arn))
            .cloned()
            .unwrap_or_default()
    }

    /// The live connection a resource ARN names in `region`.
    pub fn connection_by_arn(&self, region: &str, arn: &str) -> Result<&Connection, ApiError> {
        // The id is the ARN's last segment; comparing the whole ARN rules out another account's.
        arn.rsplit_once('/')
            .and_then(|(_, id)| self.regions.get(region)?.connections.get(id))
            .filter(|c| c.arn == arn)
            .ok_or_else(|| resource_not_found(arn))
    }

    /// Every live connection with its tags and the Create that made it, for the state file.
    pub fn export(&self) -> Vec<StoredConnection> {
        self.all()
            .into_iter()
            .map(|connection| {
                let region = &self.regions[&connection.region];
                let tags = region
                    .tags
                    .get(&connection.arn)
                    .cloned()
                    .unwrap_or_default();
                let create_request = connection.client_token.as_ref().and_then(|token| {
                    region
                        .tokens
                        .get(&(connection.environment_account_id.clone(), token.clone()))
                        .map(|used| used.request.clone())
                });
                StoredConnection {
                    connection,
                    tags,
                    create_request,
                }
            })
            .collect()
    }

    /// The last timestamp handed out, for the state file.
    pub fn clock(&self) -> Millis {
        self.clock
    }

    /// Puts back what [`Store::export`] gave (read from the state file), refusing anything a
    /// store could not have held: the file was edited or damaged, and guessing would hide it.
    pub fn import(&mut self, stored: Vec<StoredConnection>, clock: Millis) -> Result<(), String> {
        let mut regions: BTreeMap<String, Region> = BTreeMap::new();
        let mut latest = clock;
        for StoredConnection {
            connection: c,
            tags,
            create_request,
        } in stored
        {
            let problem = |what: &str| format!("connection {:?}: {what}", c.id);
            if !validate::is_connection_id(&c.id) {
                return Err(problem("the id is not a connection id"));
            }
            if !validate::is_region(&c.region) {
                return Err(problem("the region is not a region name"));
            }
            if !validate::is_account_id(&c.environment_account_id)
                || !validate::is_account_id(&c.management_account_id)
            {
                return Err(problem("an account id is not 12 digits"));
            }
            if c.arn != connection_arn(&c.region, &c.environment_account_id, &c.id) {
                return Err(problem(
                    "the ARN does not name its region, environment account and id",
                ));
            }
            if !validate::is_resource_name(&c.environment_name) {
                return Err(problem("the environment name is not valid"));
            }
            if tags.len() > MAX_TAGS_PER_RESOURCE {
                return Err(problem("more tags than a resource may have"));
            }
            if regions.values().any(|r| r.connections.contains_key(&c.id)) {
                return Err(problem("the id is used twice"));
            }
            let here = regions.entry(c.region.clone()).or_default();
            match (&c.client_token, create_request) {
                (Some(token), Some(request)) => {
                    let key = (c.environment_account_id.clone(), token.clone());
                    if here.tokens.contains_key(&key) {
                        return Err(problem("its client token is used by another connection"));
                    }
                    here.tokens.insert(
                        key,
                        TokenUse {
                            id: c.id.clone(),
                            request,
                        },
                    );
                }
                (None, None) => {}
                (Some(_), None) => {
                    return Err(problem("a client token without the Create that used it"));
                }
                (None, Some(_)) => {
                    return Err(problem("a Create request without its client token"));
                }
            }
            latest = latest.max(c.requested_at).max(c.last_modified_at);
            here.tags.insert(c.arn.clone(), tags);
            here.connections.insert(c.id.clone(), c);
        }
        self.regions = regions;
        self.clock = latest;
        Ok(())
    }

    fn tags_in(&self, region: &str, arn: &str) -> Result<&BTreeMap<String, String>, ApiError> {
        self.regions
            .get(region)
            .and_then(|r| r.tags.get(arn))
            .ok_or_else(|| resource_not_found(arn))
    }

    fn tags_mut(
        &mut self,
        region: &str,
        arn: &str,
    ) -> Result<&mut BTreeMap<String, String>, ApiError> {
        self.regions
            .get_mut(region)
            .and_then(|r| r.tags.get_mut(arn))
            .ok_or_else(|| resource_not_found(arn))
    }

    pub fn tag(
        &mut self,
        region: &str,
        arn: &str,
        tags: Vec<(String, String)>,
    ) -> Result<(), ApiError> {
        let current = self.tags_mut(region, arn)?;
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

    pub fn untag(&mut self, region: &str, arn: &str, keys: &[String]) -> Result<(), ApiError> {
        let current = self.tags_mut(region, arn)?;
        for key in keys {
            current.remove(key);
        }
        Ok(())
    }

    pub fn list_tags(
        &self,
        region: &str,
        req: &ListTagsRequest,
    ) -> Result<Page<(String, String)>, ApiError> {
        let tags = self.tags_in(region, &req.resource_arn)?;
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

/// The ARN of a connection: its region, its environment account and its id.
pub fn connection_arn(region: &str, account: &str, id: &str) -> String {
    format!("arn:aws:proton:{region}:{account}:environment-account-connection/{id}")
}

pub fn resource_not_found(arn: &str) -> ApiError {
    ApiError::not_found(format!("Resource {arn} not found"))
}

pub fn not_found(id: &str) -> ApiError {
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
    const ENV: &str = "444455556666";
    const R: &str = "us-east-1";

    fn everyone(_: &Connection) -> bool {
        true
    }

    fn store() -> Store {
        Store::new(None)
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
            requested_by: RequestedBy::EnvironmentAccount,
            environment_name: None,
            statuses: vec![],
            max_results,
            next_token: None,
        }
    }

    #[test]
    fn create_makes_a_pending_connection_in_this_account() {
        let mut s = store();
        let c = s.create(R, ENV, create("dev", None), 1_000).unwrap();
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
        let first = s.create(R, ENV, create("dev", Some("t1")), 1).unwrap();
        let again = s.create(R, ENV, create("dev", Some("t1")), 2).unwrap();
        assert_eq!(first, again);
        assert_eq!(s.all().len(), 1);

        s.delete(R, &first.id, 0).unwrap();
        let fresh = s.create(R, ENV, create("dev", Some("t1")), 3).unwrap();
        assert_ne!(fresh.id, first.id);
    }

    #[test]
    fn same_environment_with_another_token_is_a_conflict_unless_rejected() {
        let mut s = store();
        let first = s.create(R, ENV, create("dev", Some("a")), 1).unwrap();
        let err = s.create(R, ENV, create("dev", Some("b")), 2).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(err.message.contains(&first.id), "{}", err.message);
        assert_eq!(
            s.create(R, ENV, create("dev", None), 3).unwrap_err().kind,
            ErrorKind::Conflict
        );

        s.reject(R, &first.id, 4).unwrap();
        assert!(s.create(R, ENV, create("dev", Some("b")), 5).is_ok());
    }

    #[test]
    fn quota_counts_live_connections() {
        let mut s = Store::new(Some(1));
        let first = s.create(R, ENV, create("a", Some("t")), 1).unwrap();
        let err = s.create(R, ENV, create("b", None), 2).unwrap_err();
        assert_eq!(err.kind, ErrorKind::ServiceQuotaExceeded);
        // A token replay is not a new connection, so it is not refused.
        assert_eq!(
            s.create(R, ENV, create("a", Some("t")), 3).unwrap().id,
            first.id
        );
        s.delete(R, &first.id, 0).unwrap();
        assert!(s.create(R, ENV, create("b", None), 3).is_ok());
    }

    #[test]
    fn status_machine() {
        let mut s = store();
        let c = s.create(R, ENV, create("dev", None), 1).unwrap();
        let accepted = s.accept(R, &c.id, 2).unwrap();
        assert_eq!(accepted.status, Status::Connected);
        assert!(accepted.last_modified_at > c.last_modified_at);
        assert_eq!(s.accept(R, &c.id, 3).unwrap_err().kind, ErrorKind::Conflict);
        assert_eq!(s.reject(R, &c.id, 4).unwrap().status, Status::Rejected);
        let err = s.accept(R, &c.id, 5).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Conflict);
        assert!(err.message.contains("REJECTED"), "{}", err.message);
        assert_eq!(s.reject(R, &c.id, 6).unwrap_err().kind, ErrorKind::Conflict);
        let update = UpdateRequest {
            id: c.id.clone(),
            role_arn: Some("arn:aws:iam::444455556666:role/x".into()),
            ..UpdateRequest::default()
        };
        assert_eq!(
            s.update(R, update, 7).unwrap_err().kind,
            ErrorKind::Conflict
        );
    }

    #[test]
    fn update_replaces_optional_roles_keeps_service_role_and_bumps_time_only_on_change() {
        let mut s = store();
        let c = s.create(R, ENV, create("dev", None), 10).unwrap();
        let same = s
            .update(
                R,
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
                R,
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
        assert_eq!(s.get(R, id).unwrap_err().kind, ErrorKind::ResourceNotFound);
        assert_eq!(
            s.delete(R, id, 0).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        assert_eq!(
            s.accept(R, id, 1).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        assert_eq!(
            s.reject(R, id, 1).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        let update = UpdateRequest {
            id: id.into(),
            ..UpdateRequest::default()
        };
        assert_eq!(
            s.update(R, update, 1).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
    }

    #[test]
    fn list_pages_cover_every_connection_once_in_creation_order() {
        let mut s = store();
        let ids: Vec<String> = (0..7)
            .map(|i| {
                s.create(R, ENV, create(&format!("env{i}"), None), 100)
                    .unwrap()
                    .id
            })
            .collect();
        let mut seen = vec![];
        let mut req = list_all(3);
        let mut pages = 0;
        loop {
            let page = s.list(R, &req, 0, everyone).unwrap();
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
            s.create(R, ENV, create(&format!("env{i}"), None), 1)
                .unwrap();
        }
        let page = s.list(R, &list_all(3), 0, everyone).unwrap();
        assert_eq!(page.items.len(), 3);
        assert_eq!(page.next_token, None);
    }

    #[test]
    fn list_filters_by_environment_and_status() {
        let mut s = store();
        let a = s.create(R, ENV, create("a", None), 1).unwrap();
        let b = s.create(R, ENV, create("b", None), 1).unwrap();
        s.accept(R, &b.id, 2).unwrap();
        let by_env = ListRequest {
            environment_name: Some("a".into()),
            ..list_all(100)
        };
        assert_eq!(
            s.list(R, &by_env, 0, everyone).unwrap().items,
            vec![a.clone()]
        );
        let by_status = ListRequest {
            statuses: vec![Status::Connected, Status::Rejected],
            ..list_all(100)
        };
        let connected: Vec<String> = s
            .list(R, &by_status, 0, everyone)
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
                s.list(R, &req, 0, everyone).unwrap_err().kind,
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
        let c = s.create(R, ENV, req, 1).unwrap();
        assert_eq!(
            s.tags_of(&c.arn).get("team").map(String::as_str),
            Some("payments")
        );

        s.tag(
            R,
            &c.arn,
            vec![
                ("tier".into(), "gold".into()),
                ("team".into(), "core".into()),
            ],
        )
        .unwrap();
        s.untag(R, &c.arn, &["tier".into(), "absent".into()])
            .unwrap();
        let tags = s.tags_of(&c.arn);
        assert_eq!(tags.len(), 1);
        assert_eq!(tags.get("team").map(String::as_str), Some("core"));

        s.delete(R, &c.id, 0).unwrap();
        assert!(s.tags_of(&c.arn).is_empty());
        assert_eq!(
            s.tag(R, &c.arn, vec![]).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        assert_eq!(
            s.untag(R, &c.arn, &[]).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
    }

    #[test]
    fn at_most_fifty_tags_on_a_resource() {
        let mut s = store();
        let c = s.create(R, ENV, create("dev", None), 1).unwrap();
        let forty: Vec<(String, String)> =
            (0..40).map(|i| (format!("k{i}"), String::new())).collect();
        s.tag(R, &c.arn, forty).unwrap();
        let eleven: Vec<(String, String)> = (100..111)
            .map(|i| (format!("k{i}"), String::new()))
            .collect();
        let err = s.tag(R, &c.arn, eleven).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Validation);
        assert_eq!(
            s.tags_of(&c.arn).len(),
            40,
            "a refused TagResource changes nothing"
        );
        // Overwriting existing keys does not count twice.
        let same: Vec<(String, String)> = (0..40).map(|i| (format!("k{i}"), "v".into())).collect();
        s.tag(R, &c.arn, same).unwrap();
    }

    #[test]
    fn list_tags_pages() {
        let mut s = store();
        let c = s.create(R, ENV, create("dev", None), 1).unwrap();
        s.tag(
            R,
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
            let page = s.list_tags(R, &req).unwrap();
            keys.extend(page.items.into_iter().map(|(k, _)| k));
            match page.next_token {
                Some(t) => req.next_token = Some(t),
                None => break,
            }
        }
        assert_eq!(keys, ["k0", "k1", "k2", "k3", "k4"]);
    }

    // ---- regions ----

    const EU: &str = "eu-west-1";

    fn ids(page: Page<Connection>) -> Vec<String> {
        page.items.into_iter().map(|c| c.id).collect()
    }

    #[test]
    fn a_connection_lives_in_the_region_of_its_create_only() {
        let mut s = store();
        let c = s.create(EU, ENV, create("dev", None), 1).unwrap();
        assert_eq!(c.region, EU);
        assert!(
            c.arn.starts_with(
                "arn:aws:proton:eu-west-1:444455556666:environment-account-connection/"
            ),
            "{}",
            c.arn
        );
        assert_eq!(s.get(EU, &c.id).unwrap(), c);
        assert_eq!(s.region_of(&c.id), Some(EU));

        // From any other region it is as unknown as an id that never existed.
        let not_found = |result: Result<Connection, ApiError>| {
            assert_eq!(result.unwrap_err(), not_found(&c.id));
        };
        not_found(s.get(R, &c.id));
        not_found(s.accept(R, &c.id, 2));
        not_found(s.reject(R, &c.id, 2));
        not_found(s.update(
            R,
            UpdateRequest {
                id: c.id.clone(),
                ..UpdateRequest::default()
            },
            2,
        ));
        not_found(s.delete(R, &c.id, 2));
        let missing_resource = resource_not_found(&c.arn);
        assert_eq!(s.tag(R, &c.arn, vec![]).unwrap_err(), missing_resource);
        assert_eq!(s.untag(R, &c.arn, &[]).unwrap_err(), missing_resource);
        let list_tags = ListTagsRequest {
            resource_arn: c.arn.clone(),
            max_results: 10,
            next_token: None,
        };
        assert_eq!(s.list_tags(R, &list_tags).unwrap_err(), missing_resource);
        assert!(
            s.list(R, &list_all(10), 2, everyone)
                .unwrap()
                .items
                .is_empty()
        );

        // ... and all of that still works in its own region.
        assert_eq!(
            ids(s.list(EU, &list_all(10), 2, everyone).unwrap()),
            [c.id.as_str()]
        );
        assert!(s.list_tags(EU, &list_tags).unwrap().items.is_empty());
        s.accept(EU, &c.id, 3).unwrap();
        s.delete(EU, &c.id, 4).unwrap();
        assert_eq!(s.region_of(&c.id), None);
    }

    #[test]
    fn tokens_conflicts_and_quotas_are_per_region() {
        let mut s = Store::new(Some(1));
        let us = s.create(R, ENV, create("dev", Some("t")), 1).unwrap();
        // Same token, same environment and management account, quota of one: another region
        // knows none of it, so this is a second connection.
        let eu = s.create(EU, ENV, create("dev", Some("t")), 2).unwrap();
        assert_ne!(us.id, eu.id);
        assert_eq!(s.all().len(), 2);
        // Each region still replays its own token and refuses its own duplicate.
        assert_eq!(s.create(EU, ENV, create("dev", Some("t")), 3).unwrap(), eu);
        assert_eq!(s.create(R, ENV, create("dev", Some("t")), 3).unwrap(), us);
        assert_eq!(
            s.create(R, ENV, create("dev", Some("u")), 4)
                .unwrap_err()
                .kind,
            ErrorKind::Conflict
        );
        assert_eq!(
            s.create(EU, ENV, create("other", None), 4)
                .unwrap_err()
                .kind,
            ErrorKind::ServiceQuotaExceeded
        );
    }

    #[test]
    fn ids_are_unique_across_regions_so_helpers_find_connections_by_id() {
        let mut s = store();
        let a = s.create(R, ENV, create("dev", None), 1).unwrap();
        let b = s.create(EU, ENV, create("dev", None), 1).unwrap();
        assert_eq!(s.region_of(&a.id), Some(R));
        assert_eq!(s.region_of(&b.id), Some(EU));
        assert_eq!(s.region_of("00000000-0000-4000-8000-000000000000"), None);
        let all: Vec<(String, String)> = s.all().into_iter().map(|c| (c.region, c.id)).collect();
        assert_eq!(all.len(), 2);
        assert!(all.contains(&(R.to_string(), a.id)));
        assert!(all.contains(&(EU.to_string(), b.id.clone())));
        assert!(s.tags_of(&b.arn).is_empty());
    }

    // ---- idempotency ----

    fn full_create(token: &str) -> CreateRequest {
        CreateRequest {
            codebuild_role_arn: Some("arn:aws:iam::444455556666:role/cb".into()),
            component_role_arn: Some("arn:aws:iam::444455556666:role/comp".into()),
            tags: vec![("a".into(), "1".into()), ("b".into(), "2".into())],
            ..create("dev", Some(token))
        }
    }

    #[test]
    fn strict_idempotency_refuses_a_token_reused_with_other_parameters() {
        let mut s = store();
        s.set_idempotency(Idempotency::Strict);
        let first = s.create(R, ENV, full_create("t1"), 1).unwrap();

        // The same request again, tags in another order, is a replay.
        let mut same = full_create("t1");
        same.tags.reverse();
        assert_eq!(s.create(R, ENV, same, 2).unwrap(), first);

        type Change = fn(&mut CreateRequest);
        let changes: [(&str, Change); 6] = [
            ("environmentName", |r| r.environment_name = "prod".into()),
            ("managementAccountId", |r| {
                r.management_account_id = "999988887777".into()
            }),
            ("roleArn", |r| r.role_arn = None),
            ("codebuildRoleArn", |r| {
                r.codebuild_role_arn = Some("arn:aws:iam::444455556666:role/other".into())
            }),
            ("componentRoleArn", |r| r.component_role_arn = None),
            ("tags", |r| r.tags.push(("c".into(), "3".into()))),
        ];
        for (member, change) in changes {
            let mut req = full_create("t1");
            change(&mut req);
            let err = s.create(R, ENV, req, 3).unwrap_err();
            assert_eq!(err.kind, ErrorKind::Conflict, "{member}");
            assert!(err.message.contains("'t1'"), "{}", err.message);
            assert!(
                err.message.contains("different parameters"),
                "{}",
                err.message
            );
            assert!(err.message.contains(member), "{}", err.message);
            assert!(err.message.contains(&first.id), "{}", err.message);
        }
        assert_eq!(
            s.all(),
            vec![first.clone()],
            "a refused Create changes nothing"
        );

        // A deleted connection frees its token, for any parameters.
        s.delete(R, &first.id, 4).unwrap();
        let mut other = full_create("t1");
        other.environment_name = "prod".into();
        assert_ne!(s.create(R, ENV, other, 5).unwrap().id, first.id);
    }

    #[test]
    fn strict_idempotency_compares_with_the_create_not_the_current_connection() {
        let mut s = store();
        s.set_idempotency(Idempotency::Strict);
        let first = s.create(R, ENV, full_create("t1"), 1).unwrap();
        s.tag(R, &first.arn, vec![("later".into(), "x".into())])
            .unwrap();
        let update = UpdateRequest {
            id: first.id.clone(),
            ..UpdateRequest::default()
        };
        let updated = s.update(R, update, 2).unwrap();
        // The retried Create is still the same request: it answers the connection as it is now.
        assert_eq!(s.create(R, ENV, full_create("t1"), 3).unwrap(), updated);
    }

    #[test]
    fn lenient_idempotency_replays_whatever_the_parameters() {
        let mut s = store();
        let first = s.create(R, ENV, full_create("t1"), 1).unwrap();
        let mut other = full_create("t1");
        other.environment_name = "prod".into();
        other.tags.clear();
        assert_eq!(s.create(R, ENV, other, 2).unwrap(), first);
        assert_eq!(s.all().len(), 1);
    }

    // ---- list lag ----

    const LAG: Millis = 1_000;

    fn lagging_store() -> Store {
        let mut s = store();
        s.set_list_lag(LAG);
        s
    }

    #[test]
    fn with_a_lag_a_new_connection_is_listed_only_once_the_lag_has_passed() {
        let mut s = lagging_store();
        let c = s.create(R, ENV, create("dev", None), 10_000).unwrap();
        assert!(ids(s.list(R, &list_all(10), 10_000, everyone).unwrap()).is_empty());
        assert!(ids(s.list(R, &list_all(10), 10_999, everyone).unwrap()).is_empty());
        assert_eq!(
            ids(s.list(R, &list_all(10), 11_000, everyone).unwrap()),
            [c.id.as_str()]
        );
        // Get is strongly consistent.
        assert_eq!(s.get(R, &c.id).unwrap(), c);
    }

    #[test]
    fn with_a_lag_a_deleted_connection_is_listed_as_it_was_until_the_lag_has_passed() {
        let mut s = lagging_store();
        let c = s.create(R, ENV, create("dev", None), 10_000).unwrap();
        let accepted = s.accept(R, &c.id, 10_500).unwrap();
        s.delete(R, &c.id, 20_000).unwrap();
        for now in [20_000, 20_999] {
            assert_eq!(
                s.list(R, &list_all(10), now, everyone).unwrap().items,
                std::slice::from_ref(&accepted)
            );
        }
        assert!(ids(s.list(R, &list_all(10), 21_000, everyone).unwrap()).is_empty());

        // Everything but List knows at once.
        assert_eq!(
            s.get(R, &c.id).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        let list_tags = ListTagsRequest {
            resource_arn: c.arn.clone(),
            max_results: 10,
            next_token: None,
        };
        assert_eq!(
            s.list_tags(R, &list_tags).unwrap_err().kind,
            ErrorKind::ResourceNotFound
        );
        // The deleted connection is listed with the filters and order of a live one.
        let by_status = ListRequest {
            statuses: vec![Status::Pending],
            ..list_all(10)
        };
        assert!(ids(s.list(R, &by_status, 20_500, everyone).unwrap()).is_empty());
        assert!(ids(s.list(EU, &list_all(10), 20_500, everyone).unwrap()).is_empty());
    }

    #[test]
    fn with_a_lag_listing_shows_the_region_as_it_was_lag_ago() {
        let mut s = lagging_store();
        let old = s.create(R, ENV, create("old", None), 1_000).unwrap();
        let brief = s.create(R, ENV, create("brief", None), 5_000).unwrap();
        s.delete(R, &brief.id, 5_500).unwrap();
        let new = s.create(R, ENV, create("new", None), 5_600).unwrap();
        s.delete(R, &old.id, 5_700).unwrap();
        // List at t shows the region at t - LAG.
        let at = |s: &Store, now: Millis| ids(s.list(R, &list_all(10), now, everyone).unwrap());
        assert_eq!(at(&s, 5_800), [old.id.as_str()]);
        assert_eq!(at(&s, 6_200), [old.id.as_str(), brief.id.as_str()]);
        assert_eq!(at(&s, 6_550), [old.id.as_str()]);
        assert_eq!(at(&s, 6_650), [old.id.as_str(), new.id.as_str()]);
        assert_eq!(at(&s, 6_700), [new.id]);
    }

    #[test]
    fn lagging_deleted_connections_page_like_live_ones_and_are_forgotten_afterwards() {
        let mut s = lagging_store();
        let made: Vec<Connection> = (0..5)
            .map(|i| {
                s.create(R, ENV, create(&format!("env{i}"), None), 100)
                    .unwrap()
            })
            .collect();
        s.delete(R, &made[1].id, 2_000).unwrap();
        s.delete(R, &made[3].id, 2_000).unwrap();
        let mut req = list_all(2);
        let mut seen = vec![];
        loop {
            let page = s.list(R, &req, 2_500, everyone).unwrap();
            seen.extend(ids(page.clone()));
            match page.next_token {
                Some(token) => req.next_token = Some(token),
                None => break,
            }
        }
        let all: Vec<String> = made.iter().map(|c| c.id.clone()).collect();
        assert_eq!(seen, all);

        // A later change in the region drops what List can no longer show.
        s.create(R, ENV, create("later", None), 3_000).unwrap();
        assert!(s.regions[R].deleted.is_empty());
    }

    #[test]
    fn without_a_lag_list_is_strongly_consistent_and_keeps_nothing_deleted() {
        let mut s = store();
        // Timestamps may run ahead of `now` when several changes share a millisecond.
        let a = s.create(R, ENV, create("a", None), 100).unwrap();
        let b = s.create(R, ENV, create("b", None), 100).unwrap();
        assert!(b.requested_at > 100);
        assert_eq!(
            ids(s.list(R, &list_all(10), 100, everyone).unwrap()),
            [a.id.clone(), b.id]
        );
        s.delete(R, &a.id, 100).unwrap();
        assert!(s.regions[R].deleted.is_empty());
        assert_eq!(
            s.list(R, &list_all(10), 100, everyone).unwrap().items.len(),
            1
        );
    }

    // ---- accounts ----

    const OTHER: &str = "777788889999";

    #[test]
    fn tokens_clashes_and_quotas_belong_to_the_environment_account() {
        let mut s = Store::new(Some(1));
        let mine = s.create(R, ENV, create("dev", Some("t")), 1).unwrap();
        // Same token, same environment and management account, quota of one: another account
        // knows none of it.
        let theirs = s.create(R, OTHER, create("dev", Some("t")), 2).unwrap();
        assert_ne!(mine.id, theirs.id);
        assert_eq!(theirs.environment_account_id, OTHER);
        assert!(
            theirs
                .arn
                .contains(":777788889999:environment-account-connection/")
        );
        assert_eq!(s.create(R, ENV, create("dev", Some("t")), 3).unwrap(), mine);
        assert_eq!(
            s.create(R, OTHER, create("dev", Some("t")), 3).unwrap(),
            theirs
        );
        let quota = s.create(R, OTHER, create("prod", None), 4).unwrap_err();
        assert_eq!(quota.kind, ErrorKind::ServiceQuotaExceeded);
        assert!(quota.message.contains(OTHER), "{}", quota.message);

        // Deleting one frees its own token only.
        s.delete(R, &theirs.id, 5).unwrap();
        assert_eq!(s.create(R, ENV, create("dev", Some("t")), 6).unwrap(), mine);
    }

    #[test]
    fn a_resource_arn_names_one_connection_of_one_account() {
        let mut s = store();
        let c = s.create(R, ENV, create("dev", None), 1).unwrap();
        assert_eq!(s.connection_by_arn(R, &c.arn).unwrap(), &c);
        let elsewhere = c.arn.replace(ENV, OTHER);
        assert_eq!(
            s.connection_by_arn(R, &elsewhere).unwrap_err(),
            resource_not_found(&elsewhere)
        );
        assert!(s.connection_by_arn(EU, &c.arn).is_err());
        assert!(
            s.connection_by_arn(R, "arn:aws:proton:us-east-1:444455556666:x")
                .is_err()
        );
    }

    #[test]
    fn export_then_import_gives_the_same_store() {
        let mut s = store();
        s.set_idempotency(Idempotency::Strict);
        let mut req = full_create("t1");
        req.environment_name = "tagged".into();
        let tagged = s.create(R, ENV, req, 1_000).unwrap();
        let plain = s.create(EU, OTHER, create("plain", None), 2_000).unwrap();
        s.accept(EU, &plain.id, 3_000).unwrap();
        let exported = s.export();
        assert_eq!(exported.len(), 2);
        // The file writes tags as the API does.
        let written = serde_json::to_value(&exported[0]).unwrap();
        assert_eq!(
            written["createRequest"]["tags"],
            serde_json::json!([{"key": "a", "value": "1"}, {"key": "b", "value": "2"}])
        );
        assert_eq!(written["connection"]["status"], "PENDING");

        let mut back = store();
        back.set_idempotency(Idempotency::Strict);
        back.import(exported.clone(), s.clock()).unwrap();
        assert_eq!(back.all(), s.all());
        assert_eq!(back.export(), exported);
        assert_eq!(back.clock(), s.clock());
        assert_eq!(back.tags_of(&tagged.arn), s.tags_of(&tagged.arn));
        // The client token still replays, and is still compared with the original Create.
        let mut replay = full_create("t1");
        replay.environment_name = "tagged".into();
        assert_eq!(back.create(R, ENV, replay, 4_000).unwrap(), tagged);
        assert_eq!(
            back.create(R, ENV, full_create("t1"), 4_000)
                .unwrap_err()
                .kind,
            ErrorKind::Conflict
        );
        // Timestamps keep going forward.
        let later = back.create(R, ENV, create("later", None), 0).unwrap();
        assert!(later.requested_at > 3_000);
    }

    #[test]
    fn import_refuses_states_no_store_could_hold() {
        let mut s = store();
        s.create(R, ENV, create("dev", Some("t")), 1).unwrap();
        s.create(R, ENV, create("prod", None), 2).unwrap();
        let good = s.export();
        type Damage = fn(&mut Vec<StoredConnection>);
        let damages: [(&str, Damage); 7] = [
            ("not a connection id", |v| v[0].connection.id = "x".into()),
            ("region", |v| v[0].connection.region = "Nowhere 1".into()),
            ("12 digits", |v| {
                v[0].connection.management_account_id = "1".into()
            }),
            ("ARN", |v| {
                v[0].connection.environment_account_id = OTHER.into()
            }),
            ("used twice", |v| v[1] = v[0].clone()),
            ("without the Create", |v| v[0].create_request = None),
            ("without its client token", |v| {
                v[1].create_request = Some(create("prod", None))
            }),
        ];
        for (expected, damage) in damages {
            let mut stored = good.clone();
            damage(&mut stored);
            let err = store().import(stored, 0).unwrap_err();
            assert!(err.contains(expected), "{expected}: {err}");
        }
    }
}
