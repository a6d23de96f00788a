//! Connection strings: URLs and the ADO.NET `Key=Value;...` form `cute` users
//! already have, parsed into each driver's options. Nothing here prints a
//! password: [`ConnectionParams::describe`] names the server only, and
//! [`ConnectionParams::redact`] scrubs the password from driver messages.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sluicegate_core::{Error, Result};

use crate::provider::Provider;

/// Parsed connection options for one provider.
#[derive(Clone)]
pub(crate) enum ConnectionParams {
    /// PostgreSQL client options.
    Postgres(Box<tokio_postgres::Config>),
    /// MySQL / MariaDB client options.
    Mysql(Box<mysql_async::Opts>),
    /// A SQLite database file.
    Sqlite(PathBuf),
}

/// ADO.NET keys that only tune a .NET connection pool or client; they have no
/// meaning here and are ignored.
const IGNORED_ADO_KEYS: &[&str] = &[
    "pooling",
    "minpoolsize",
    "maxpoolsize",
    "minimumpoolsize",
    "maximumpoolsize",
    "connectionlifetime",
    "connectionidlelifetime",
    "commandtimeout",
    "defaultcommandtimeout",
    "trustservercertificate",
    "includeerrordetail",
    "includeerrordetails",
    "keepalive",
    "maxautoprepare",
    "charset",
    "characterset",
    "allowuservariables",
    "convertzerodatetime",
    "allowzerodatetime",
    "allowpublickeyretrieval",
    "cache",
    "mode",
    "foreignkeys",
    "persistsecurityinfo",
];

impl ConnectionParams {
    /// Parses a rendered connection string for `provider`. Relative SQLite paths
    /// are resolved against `base_dir`. Errors never contain the password.
    pub(crate) fn parse(provider: Provider, raw: &str, base_dir: &Path) -> Result<Self> {
        let raw = raw.trim();
        if raw.is_empty() {
            return Err(Error::config("is empty"));
        }
        match provider {
            Provider::Postgres => parse_postgres(raw).map(|c| Self::Postgres(Box::new(c))),
            Provider::Mysql => parse_mysql(raw).map(|o| Self::Mysql(Box::new(o))),
            Provider::Sqlite => Ok(Self::Sqlite(parse_sqlite(raw, base_dir)?)),
        }
    }

    /// Where this connects, without credentials: `host:port/database` or the path.
    pub(crate) fn describe(&self) -> String {
        match self {
            Self::Postgres(c) => {
                let host = c
                    .get_hosts()
                    .first()
                    .map(|h| match h {
                        tokio_postgres::config::Host::Tcp(h) => h.clone(),
                        #[cfg(unix)]
                        tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
                    })
                    .unwrap_or_else(|| "localhost".into());
                let port = c.get_ports().first().copied().unwrap_or(5432);
                let db = c.get_dbname().or(c.get_user()).unwrap_or("postgres");
                format!("{host}:{port}/{db}")
            }
            Self::Mysql(o) => format!(
                "{}:{}/{}",
                o.ip_or_hostname(),
                o.tcp_port(),
                o.db_name().unwrap_or("")
            ),
            Self::Sqlite(p) => p.display().to_string(),
        }
    }

    /// The password, if any, to scrub from messages.
    fn password(&self) -> Option<String> {
        match self {
            Self::Postgres(c) => c
                .get_password()
                .map(|p| String::from_utf8_lossy(p).into_owned()),
            Self::Mysql(o) => o.pass().map(str::to_owned),
            Self::Sqlite(_) => None,
        }
    }

    /// `text` with the password (if it occurs) replaced by `***`.
    pub(crate) fn redact(&self, text: &str) -> String {
        match self.password() {
            Some(p) if p.len() >= 3 => text.replace(&p, "***"),
            _ => text.to_owned(),
        }
    }
}

/// Splits `Key=Value;Key="quoted;value"` pairs; keys are lowercased and
/// stripped of spaces and underscores (`User ID` → `userid`).
fn ado_pairs(raw: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut rest = raw;
    while !rest.trim().is_empty() {
        let Some(eq) = rest.find('=') else {
            return Err(Error::config(format!(
                "'{}' is not a Key=Value pair",
                rest.trim().chars().take(40).collect::<String>()
            )));
        };
        let key: String = rest[..eq]
            .chars()
            .filter(|c| !c.is_whitespace() && *c != '_')
            .flat_map(char::to_lowercase)
            .collect();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(quote) = rest.chars().next().filter(|c| *c == '"' || *c == '\'') {
            let body = &rest[1..];
            let end = body
                .find(quote)
                .ok_or_else(|| Error::config(format!("the value of {key} has no closing quote")))?;
            value = body[..end].to_owned();
            rest = body[end + 1..].trim_start();
            rest = rest.strip_prefix(';').unwrap_or(rest);
        } else {
            let end = rest.find(';').unwrap_or(rest.len());
            value = rest[..end].trim().to_owned();
            rest = rest.get(end + 1..).unwrap_or("");
        }
        if key.is_empty() {
            return Err(Error::config("a Key=Value pair has an empty key"));
        }
        pairs.push((key, value));
    }
    Ok(pairs)
}

fn is_ado(raw: &str) -> bool {
    !raw.contains("://") && raw.contains(';')
        || raw
            .split('=')
            .next()
            .is_some_and(|k| k.contains(' ') && !raw.contains("://"))
}

fn unknown_key(key: &str, accepted: &str) -> Error {
    Error::config(format!(
        "unknown key '{key}' in the connection string; accepted: {accepted}"
    ))
}

fn parse_port(value: &str) -> Result<u16> {
    value.parse().map_err(|_| {
        Error::config(format!(
            "port '{value}' is not a number between 1 and 65535"
        ))
    })
}

fn refuse_tls(mode: &str) -> Result<()> {
    match mode.to_ascii_lowercase().replace(['-', '_'], "").as_str() {
        "" | "disable" | "disabled" | "none" | "allow" | "prefer" | "preferred" => Ok(()),
        other => Err(Error::config(format!(
            "ssl mode '{other}' asks for TLS, which this source does not support yet; \
             connect over a trusted network or an SSH tunnel with the ssl mode set to disable or prefer"
        ))),
    }
}

fn parse_postgres(raw: &str) -> Result<tokio_postgres::Config> {
    let config = if is_ado(raw) {
        let mut config = tokio_postgres::Config::new();
        for (key, value) in ado_pairs(raw)? {
            match key.as_str() {
                "host" | "server" | "datasource" => {
                    config.host(&value);
                }
                "port" => {
                    config.port(parse_port(&value)?);
                }
                "database" | "initialcatalog" | "db" => {
                    config.dbname(&value);
                }
                "username" | "userid" | "user" | "uid" => {
                    config.user(&value);
                }
                "password" | "pwd" => {
                    config.password(&value);
                }
                "sslmode" => refuse_tls(&value)?,
                "timeout" | "connecttimeout" => {
                    let secs: u64 = value.parse().map_err(|_| {
                        Error::config(format!("{key} '{value}' is not a number of seconds"))
                    })?;
                    config.connect_timeout(std::time::Duration::from_secs(secs));
                }
                "applicationname" => {
                    config.application_name(&value);
                }
                "searchpath" => {
                    config.options(format!("-c search_path={value}"));
                }
                k if IGNORED_ADO_KEYS.contains(&k) => {}
                _ => {
                    return Err(unknown_key(
                        &key,
                        "Host, Port, Database, Username, Password, SSL Mode, Timeout, \
                         Application Name, Search Path",
                    ));
                }
            }
        }
        config
    } else {
        let raw = raw
            .strip_prefix("postgres:")
            .map_or_else(|| raw.to_owned(), |rest| format!("postgresql:{rest}"));
        tokio_postgres::Config::from_str(&raw).map_err(|e| {
            Error::config(format!(
                "is not a PostgreSQL URL (postgres://user:password@host:5432/database) \
                 or Key=Value list: {e}"
            ))
        })?
    };
    if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
        refuse_tls("require")?;
    }
    if config.get_hosts().is_empty() {
        return Err(Error::config(
            "names no host; add Host=... or a host to the URL",
        ));
    }
    Ok(config)
}

fn parse_mysql(raw: &str) -> Result<mysql_async::Opts> {
    let builder = if is_ado(raw) {
        let mut b = mysql_async::OptsBuilder::default();
        for (key, value) in ado_pairs(raw)? {
            b = match key.as_str() {
                "server" | "host" | "datasource" | "address" => b.ip_or_hostname(value),
                "port" => b.tcp_port(parse_port(&value)?),
                "database" | "initialcatalog" | "db" => b.db_name(Some(value)),
                "uid" | "userid" | "user" | "username" => b.user(Some(value)),
                "pwd" | "password" => b.pass(Some(value)),
                "sslmode" => {
                    refuse_tls(&value)?;
                    b
                }
                "connecttimeout" | "connectiontimeout" => b,
                k if IGNORED_ADO_KEYS.contains(&k) => b,
                _ => {
                    return Err(unknown_key(
                        &key,
                        "Server, Port, Database, Uid, Pwd, SslMode, Connect Timeout",
                    ));
                }
            };
        }
        b
    } else {
        let url = match raw.split_once("://") {
            Some(("mysql" | "mariadb", rest)) => format!("mysql://{rest}"),
            _ => {
                return Err(Error::config(
                    "is not a MySQL URL (mysql://user:password@host:3306/database) or Key=Value list",
                ));
            }
        };
        let opts = mysql_async::Opts::from_url(&url).map_err(|e| {
            Error::config(format!(
                "is not a valid MySQL URL (mysql://user:password@host:3306/database): {e}"
            ))
        })?;
        mysql_async::OptsBuilder::from_opts(opts)
    };
    // Connect where the string says, never to a socket the server advertises.
    Ok(builder.prefer_socket(false).stmt_cache_size(0).into())
}

fn parse_sqlite(raw: &str, base_dir: &Path) -> Result<PathBuf> {
    let path = if is_ado(raw) || raw.to_ascii_lowercase().starts_with("data source") {
        let mut path = None;
        for (key, value) in ado_pairs(raw)? {
            match key.as_str() {
                "datasource" | "filename" => path = Some(value),
                k if IGNORED_ADO_KEYS.contains(&k) => {}
                _ => return Err(unknown_key(&key, "Data Source, Mode, Cache")),
            }
        }
        path.ok_or_else(|| Error::config("names no file; add Data Source=path/to/file.db"))?
    } else {
        let stripped = raw
            .strip_prefix("sqlite://")
            .or_else(|| raw.strip_prefix("sqlite:"))
            .or_else(|| raw.strip_prefix("file:"))
            .unwrap_or(raw);
        stripped.split('?').next().unwrap_or(stripped).to_owned()
    };
    if path == ":memory:" {
        return Err(Error::config(
            "':memory:' is an empty database; name a SQLite file to read",
        ));
    }
    let path = PathBuf::from(path);
    Ok(if path.is_relative() {
        base_dir.join(path)
    } else {
        path
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pg(raw: &str) -> ConnectionParams {
        ConnectionParams::parse(Provider::Postgres, raw, Path::new(".")).unwrap()
    }

    #[test]
    fn postgres_urls_and_ado_strings_describe_the_same_server() {
        let url = pg("postgres://reader:pa;ss@db.internal:6543/shop");
        let ado = pg(
            "Host=db.internal; Port=6543; Database=shop; Username=reader; Password=\"pa;ss\"; Pooling=true",
        );
        assert_eq!(url.describe(), "db.internal:6543/shop");
        assert_eq!(ado.describe(), "db.internal:6543/shop");
        assert_eq!(ado.redact("failed for pa;ss"), "failed for ***");
        let kv = pg("host=127.0.0.1 port=5433 user=u dbname=d");
        assert_eq!(kv.describe(), "127.0.0.1:5433/d");
    }

    #[test]
    fn mysql_urls_and_ado_strings_parse() {
        let url = ConnectionParams::parse(
            Provider::Mysql,
            "mariadb://app:secret@10.0.0.5:3307/shop",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(url.describe(), "10.0.0.5:3307/shop");
        assert_eq!(url.redact("Access denied (secret)"), "Access denied (***)");
        let ado = ConnectionParams::parse(
            Provider::Mysql,
            "Server=10.0.0.5;Port=3307;Database=shop;Uid=app;Pwd=secret;Convert Zero Datetime=True",
            Path::new("."),
        )
        .unwrap();
        assert_eq!(ado.describe(), "10.0.0.5:3307/shop");
    }

    #[test]
    fn sqlite_paths_resolve_against_the_config_directory() {
        for raw in [
            "data/shop.db",
            "Data Source=data/shop.db;Mode=ReadOnly",
            "sqlite:data/shop.db",
        ] {
            let p = ConnectionParams::parse(Provider::Sqlite, raw, Path::new("/etc/sg")).unwrap();
            assert_eq!(p.describe(), "/etc/sg/data/shop.db", "{raw}");
        }
    }

    #[test]
    fn bad_strings_say_what_is_wrong_without_the_password() {
        let err = ConnectionParams::parse(
            Provider::Postgres,
            "Host=h;Pasword=hunter22",
            Path::new("."),
        )
        .err()
        .unwrap();
        assert!(err.message().starts_with("unknown key 'pasword'"), "{err}");
        assert!(!err.to_string().contains("hunter22"));
        let err = ConnectionParams::parse(
            Provider::Postgres,
            "Host=h;Password=x;SSL Mode=Require",
            Path::new("."),
        )
        .err()
        .unwrap();
        assert!(err.message().contains("TLS"), "{err}");
        let err = ConnectionParams::parse(Provider::Mysql, "http://h/db", Path::new("."))
            .err()
            .unwrap();
        assert!(err.message().contains("mysql://"), "{err}");
    }
}
