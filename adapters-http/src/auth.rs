//! Authentication of the `http` source. Secrets come only from the environment
//! (`...Env`) or from a file (`...File`, relative to the configuration); they are
//! marked sensitive in headers and never printed.
//!
//! ```yaml
//! auth: { type: bearer, tokenEnv: API_TOKEN }
//! auth: { type: basic, usernameEnv: API_USER, passwordEnv: API_PASSWORD }
//! auth: { type: api_key, name: X-Api-Key, location: header, valueEnv: API_KEY }   # or location: query
//! auth: { type: oauth2_client_credentials, tokenUrl: "https://auth.example/token",
//!         clientIdEnv: CLIENT_ID, clientSecretEnv: CLIENT_SECRET, scope: "read" }
//! ```

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{AUTHORIZATION, HeaderValue};
use serde::Deserialize;
use sluicegate_core::{BuildContext, Error, ErrorKind, Result, Secret, field_error};
use sluicegate_templates::render_template;
use tokio::sync::Mutex;

/// A secret: from an environment variable or a file.
fn secret(
    env: &Option<String>,
    file: &Option<String>,
    field: &str,
    base_dir: &Path,
) -> Result<Secret> {
    match (env, file) {
        (Some(var), None) => {
            Secret::from_env(var).map_err(|e| field_error(&format!("auth.{field}Env"), e.message()))
        }
        (None, Some(file)) => Secret::from_file(&base_dir.join(file))
            .map_err(|e| field_error(&format!("auth.{field}File"), e.message())),
        _ => Err(field_error(
            "auth",
            format!("give exactly one of {field}Env and {field}File"),
        )),
    }
}

/// Where an API key goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum KeyLocation {
    /// A request header.
    Header,
    /// A query parameter.
    Query,
}

/// The `auth` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum AuthConfig {
    /// `Authorization: Bearer <token>`.
    #[serde(rename_all = "camelCase")]
    Bearer {
        /// Environment variable holding the token.
        #[serde(default)]
        token_env: Option<String>,
        /// File holding the token.
        #[serde(default)]
        token_file: Option<String>,
    },
    /// HTTP basic authentication.
    #[serde(rename_all = "camelCase")]
    Basic {
        /// Environment variable holding the user name.
        #[serde(default)]
        username_env: Option<String>,
        /// File holding the user name.
        #[serde(default)]
        username_file: Option<String>,
        /// Environment variable holding the password.
        #[serde(default)]
        password_env: Option<String>,
        /// File holding the password.
        #[serde(default)]
        password_file: Option<String>,
    },
    /// An API key in a header or query parameter.
    #[serde(rename_all = "camelCase")]
    ApiKey {
        /// Header or parameter name.
        name: String,
        /// Where it goes.
        #[serde(default = "default_location")]
        location: KeyLocation,
        /// Environment variable holding the key.
        #[serde(default)]
        value_env: Option<String>,
        /// File holding the key.
        #[serde(default)]
        value_file: Option<String>,
    },
    /// OAuth 2 client credentials: a token from `tokenUrl`, renewed before it expires.
    #[serde(rename_all = "camelCase")]
    Oauth2ClientCredentials {
        /// The token endpoint; a template.
        token_url: String,
        /// Environment variable holding the client id.
        #[serde(default)]
        client_id_env: Option<String>,
        /// File holding the client id.
        #[serde(default)]
        client_id_file: Option<String>,
        /// Environment variable holding the client secret.
        #[serde(default)]
        client_secret_env: Option<String>,
        /// File holding the client secret.
        #[serde(default)]
        client_secret_file: Option<String>,
        /// Scope to ask for.
        #[serde(default)]
        scope: Option<String>,
        /// Audience to ask for.
        #[serde(default)]
        audience: Option<String>,
    },
}

fn default_location() -> KeyLocation {
    KeyLocation::Header
}

/// Authentication ready to apply.
#[derive(Clone)]
pub(crate) enum Auth {
    None,
    Header(reqwest::header::HeaderName, HeaderValue),
    Basic(Secret, Secret),
    Query(String, Secret),
    OAuth2(Arc<OAuth2>),
}

pub(crate) struct OAuth2 {
    token_url: reqwest::Url,
    client_id: Secret,
    client_secret: Secret,
    scope: Option<String>,
    audience: Option<String>,
    token: Mutex<Option<(Secret, Instant)>>,
}

fn sensitive(value: &str) -> Result<HeaderValue> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| Error::config("a credential has characters not allowed in headers"))?;
    v.set_sensitive(true);
    Ok(v)
}

impl AuthConfig {
    /// Resolves the secrets (environment or files) and templates.
    pub(crate) fn resolve(&self, ctx: &BuildContext) -> Result<Auth> {
        let dir = &ctx.base_dir;
        Ok(match self {
            AuthConfig::Bearer {
                token_env,
                token_file,
            } => {
                let token = secret(token_env, token_file, "token", dir)?;
                Auth::Header(
                    AUTHORIZATION,
                    sensitive(&format!("Bearer {}", token.expose()))?,
                )
            }
            AuthConfig::Basic {
                username_env,
                username_file,
                password_env,
                password_file,
            } => {
                let user = secret(username_env, username_file, "username", dir)?;
                let pass = secret(password_env, password_file, "password", dir)?;
                Auth::Basic(user, pass)
            }
            AuthConfig::ApiKey {
                name,
                location,
                value_env,
                value_file,
            } => {
                let value = secret(value_env, value_file, "value", dir)?;
                match location {
                    KeyLocation::Header => {
                        let name = reqwest::header::HeaderName::from_bytes(name.as_bytes())
                            .map_err(|_| field_error("auth.name", "is not a valid header name"))?;
                        Auth::Header(name, sensitive(value.expose())?)
                    }
                    KeyLocation::Query => Auth::Query(name.clone(), value),
                }
            }
            AuthConfig::Oauth2ClientCredentials {
                token_url,
                client_id_env,
                client_id_file,
                client_secret_env,
                client_secret_file,
                scope,
                audience,
            } => {
                let url = render_template("auth.tokenUrl", token_url, &ctx.template_scope)
                    .map_err(|e| field_error("auth.tokenUrl", e.message()))?;
                let token_url = reqwest::Url::parse(&url)
                    .map_err(|e| field_error("auth.tokenUrl", format!("'{url}': {e}")))?;
                Auth::OAuth2(Arc::new(OAuth2 {
                    token_url,
                    client_id: secret(client_id_env, client_id_file, "clientId", dir)?,
                    client_secret: secret(
                        client_secret_env,
                        client_secret_file,
                        "clientSecret",
                        dir,
                    )?,
                    scope: scope.clone(),
                    audience: audience.clone(),
                    token: Mutex::new(None),
                }))
            }
        })
    }
}

impl Auth {
    /// Adds the credentials to a request.
    pub(crate) async fn apply(
        &self,
        client: &reqwest::Client,
        request: reqwest::RequestBuilder,
    ) -> Result<reqwest::RequestBuilder> {
        Ok(match self {
            Auth::None => request,
            Auth::Header(name, value) => request.header(name, value.clone()),
            Auth::Basic(user, pass) => request.basic_auth(user.expose(), Some(pass.expose())),
            Auth::Query(name, value) => request.query(&[(name.as_str(), value.expose())]),
            Auth::OAuth2(o) => {
                let token = o.token(client).await?;
                request.header(
                    AUTHORIZATION,
                    sensitive(&format!("Bearer {}", token.expose()))?,
                )
            }
        })
    }

    /// Forgets a cached token after a 401, so the next attempt fetches a new one.
    pub(crate) async fn invalidate(&self) -> bool {
        match self {
            Auth::OAuth2(o) => o.token.lock().await.take().is_some(),
            _ => false,
        }
    }
}

impl OAuth2 {
    async fn token(&self, client: &reqwest::Client) -> Result<Secret> {
        let mut cached = self.token.lock().await;
        if let Some((token, until)) = cached.as_ref()
            && Instant::now() < *until
        {
            return Ok(token.clone());
        }
        let mut form = vec![
            ("grant_type", "client_credentials".to_owned()),
            ("client_id", self.client_id.expose().to_owned()),
            ("client_secret", self.client_secret.expose().to_owned()),
        ];
        if let Some(s) = &self.scope {
            form.push(("scope", s.clone()));
        }
        if let Some(a) = &self.audience {
            form.push(("audience", a.clone()));
        }
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(&form)
            .finish();
        let response = client
            .post(self.token_url.clone())
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await
            .map_err(|e| {
                Error::new(
                    ErrorKind::Auth,
                    format!("cannot reach the token endpoint {}", self.token_url),
                )
                .with_source(e.without_url())
            })?;
        let status = response.status();
        let body: serde_json::Value = response.json().await.unwrap_or_default();
        if !status.is_success() {
            return Err(Error::new(
                ErrorKind::Auth,
                format!(
                    "the token endpoint {} answered {status}: {}",
                    self.token_url,
                    body.get("error_description")
                        .or(body.get("error"))
                        .and_then(|v| v.as_str())
                        .unwrap_or("no reason given")
                ),
            ));
        }
        let token = body["access_token"].as_str().ok_or_else(|| {
            Error::new(
                ErrorKind::Auth,
                format!(
                    "the token endpoint {} answered without access_token",
                    self.token_url
                ),
            )
        })?;
        // Renew a little before it expires (default lifetime: an hour).
        let lifetime = body["expires_in"].as_u64().unwrap_or(3600);
        let until = Instant::now() + Duration::from_secs(lifetime.saturating_sub(30).max(1));
        let token = Secret::new(token);
        *cached = Some((token.clone(), until));
        Ok(token)
    }
}
