//! The PostgreSQL upstream against a real PostgreSQL 15 cluster: mint and
//! revoke as the planner's statements would, with a superuser admin and
//! with the least-privileged admin docs/targets.md describes; TLS; a server gone;
//! the pool's bound.

// Test code: a failed expectation should fail the test loudly.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};
use stint_targets::{PostgresUpstream, RevokeReport, TlsMode, UpstreamError};
use stint_tests::postgres::{MARKER, PgCluster, admin_grants, scram_verifier, sqlstate};

const ROLE: &str = "stint_aaaaaaaaaaaaaaaaaaaaaaaa";
const ROLE_2: &str = "stint_bbbbbbbbbbbbbbbbbbbbbbbb";
const ADMIN: &str = "stint_admin";
const ADMIN_PASSWORD: &str = "admin-password-0f9e";
const LOGIN_PASSWORD: &str = "login-password-7c1d";

/// A database `app` with schema `crm`: `accounts` (to grant) and
/// `secrets` (never granted), owned by the superuser.
async fn prepare_app(cluster: &PgCluster) {
    cluster
        .create_crm_database("app")
        .await
        .batch_execute("CREATE ROLE crm_readers NOLOGIN;")
        .await
        .unwrap();
}

/// The statements the planner makes for a login that may SELECT
/// crm.accounts.
fn mint_statements(role: &str) -> Vec<String> {
    vec![
        format!(
            "CREATE ROLE \"{role}\" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS INHERIT CONNECTION LIMIT 2 VALID UNTIL '2099-01-01T00:00:00Z' PASSWORD '{}'",
            scram_verifier(LOGIN_PASSWORD)
        ),
        format!("COMMENT ON ROLE \"{role}\" IS '{MARKER}'"),
        format!("GRANT CONNECT ON DATABASE \"app\" TO \"{role}\""),
        format!("GRANT \"crm_readers\" TO \"{role}\""),
        format!("GRANT USAGE ON SCHEMA \"crm\" TO \"{role}\""),
        format!("GRANT SELECT ON TABLE \"crm\".\"accounts\" TO \"{role}\""),
    ]
}

async fn role_exists(cluster: &PgCluster, role: &str) -> bool {
    cluster
        .superuser_client()
        .await
        .query_opt("SELECT 1 FROM pg_roles WHERE rolname = $1", &[&role])
        .await
        .unwrap()
        .is_some()
}

/// Mint, use, revoke with a live session, revoke again: the whole life of
/// a login, as `upstream`'s admin.
async fn mint_use_revoke(cluster: &PgCluster, upstream: &PostgresUpstream) {
    upstream.create(&mint_statements(ROLE)).await.unwrap();

    let (session, ended) = cluster
        .connect_as(ROLE, LOGIN_PASSWORD, "app")
        .await
        .expect("the new role logs in with its password");
    let row = session
        .query_one("SELECT name FROM crm.accounts WHERE id = 1", &[])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "acme");
    let refused = session
        .query_one("SELECT value FROM crm.secrets", &[])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501");
    let groups = session
        .query_one(
            "SELECT pg_has_role(current_user, 'crm_readers', 'MEMBER')",
            &[],
        )
        .await
        .unwrap();
    assert!(groups.get::<_, bool>(0));

    let report = upstream.revoke(ROLE).await.unwrap();
    assert_eq!(
        report,
        RevokeReport {
            existed: true,
            terminated: 1
        }
    );
    // The open session was ended by the server (57P01 admin_shutdown)...
    let ended = tokio::time::timeout(Duration::from_secs(10), ended)
        .await
        .expect("the terminated session ends")
        .unwrap();
    assert_eq!(sqlstate(&ended.unwrap_err()), "57P01");
    // ...so its next statement fails.
    assert!(session.simple_query("SELECT 1").await.is_err());
    // A new login is refused.
    let Err(login) = cluster.connect_as(ROLE, LOGIN_PASSWORD, "app").await else {
        panic!("a revoked role cannot log in");
    };
    assert!(
        ["28000", "28P01"].contains(&sqlstate(&login).as_str()),
        "{login}"
    );
    assert!(!role_exists(cluster, ROLE).await);

    // Already gone counts as success.
    assert_eq!(
        upstream.revoke(ROLE).await.unwrap(),
        RevokeReport {
            existed: false,
            terminated: 0
        }
    );
}

#[tokio::test]
async fn a_superuser_admin_mints_and_revokes() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let upstream = PostgresUpstream::new(cluster.settings(ADMIN, ADMIN_PASSWORD, "app")).unwrap();
    upstream.ping().await.unwrap();
    mint_use_revoke(&cluster, &upstream).await;
}

/// docs/targets.md's admin: CREATEROLE, pg_signal_backend, grant options.
async fn least_admin(cluster: &PgCluster) -> PostgresUpstream {
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, false).await;
    let owner = cluster.superuser_client_in("app").await;
    for statement in admin_grants(ADMIN, "app", "crm", &["accounts"], "SELECT") {
        owner.batch_execute(&statement).await.unwrap();
    }
    PostgresUpstream::new(cluster.settings(ADMIN, ADMIN_PASSWORD, "app")).unwrap()
}

#[tokio::test]
async fn a_non_superuser_admin_mints_and_revokes() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    let upstream = least_admin(&cluster).await;
    let admin_is_superuser = cluster
        .superuser_client()
        .await
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&ADMIN],
        )
        .await
        .unwrap();
    assert!(!admin_is_superuser.get::<_, bool>(0));
    mint_use_revoke(&cluster, &upstream).await;
}

/// What the role owns and was granted is dropped (DROP OWNED, which needs
/// the role's privileges, so revoke grants the admin the role first:
/// without it, PostgreSQL 15 refuses with 42501). Nothing it made is
/// handed to the admin.
#[tokio::test]
async fn a_non_superuser_admin_revokes_a_role_that_owns_objects() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    let upstream = least_admin(&cluster).await;
    let owner = cluster.superuser_client_in("app").await;
    owner
        .batch_execute(&format!(
            "CREATE SCHEMA scratch; GRANT USAGE, CREATE ON SCHEMA scratch TO \"{ADMIN}\" WITH GRANT OPTION"
        ))
        .await
        .unwrap();
    let mut statements = mint_statements(ROLE);
    statements.push(format!(
        "GRANT USAGE, CREATE ON SCHEMA \"scratch\" TO \"{ROLE}\""
    ));
    upstream.create(&statements).await.unwrap();
    let (session, _ended) = cluster
        .connect_as(ROLE, LOGIN_PASSWORD, "app")
        .await
        .unwrap();
    session
        .batch_execute("CREATE TABLE scratch.mine (id int)")
        .await
        .unwrap();
    drop(session);

    // The research behind revoke's GRANT: without the role's privileges,
    // the least admin cannot reassign or drop what the role owns.
    let (admin, _admin_task) = cluster
        .connect_as(ADMIN, ADMIN_PASSWORD, "app")
        .await
        .unwrap();
    let refused = admin
        .batch_execute(&format!("REASSIGN OWNED BY \"{ROLE}\" TO CURRENT_USER"))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501", "{refused}");
    let refused = admin
        .batch_execute(&format!("DROP OWNED BY \"{ROLE}\""))
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&refused), "42501", "{refused}");

    let report = upstream.revoke(ROLE).await.unwrap();
    assert!(report.existed);
    assert!(!role_exists(&cluster, ROLE).await);
    let left = owner
        .query_one(
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'scratch' AND tablename = 'mine'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(left.get::<_, i64>(0), 0, "what the login made is dropped");
    // The admin holds no membership left over from the revocation.
    let memberships = owner
        .query_one(
            "SELECT count(*) FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.member WHERE r.rolname = $1 AND m.roleid NOT IN (SELECT oid FROM pg_roles WHERE rolname = 'pg_signal_backend')",
            &[&ADMIN],
        )
        .await
        .unwrap();
    assert_eq!(memberships.get::<_, i64>(0), 0);
}

/// DROP OWNED by a non-superuser revokes only what that admin granted: a
/// privilege someone else gave a Stint role keeps it from being dropped
/// (2BP01, refused: a person must look). The role can no longer log in
/// meanwhile, and once the stray grant is gone, revoke finishes.
#[tokio::test]
async fn a_grant_by_someone_else_blocks_the_drop_but_not_nologin() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    let upstream = least_admin(&cluster).await;
    upstream.create(&mint_statements(ROLE)).await.unwrap();
    let owner = cluster.superuser_client_in("app").await;
    owner
        .batch_execute(&format!(
            "CREATE SCHEMA scratch; GRANT USAGE ON SCHEMA scratch TO \"{ROLE}\""
        ))
        .await
        .unwrap();
    match upstream.revoke(ROLE).await {
        Err(UpstreamError::Refused { sqlstate, message }) => {
            assert_eq!(sqlstate, "2BP01", "{message}")
        }
        other => panic!("{other:?}"),
    }
    assert!(role_exists(&cluster, ROLE).await);
    let Err(login) = cluster.connect_as(ROLE, LOGIN_PASSWORD, "app").await else {
        panic!("a role being revoked cannot log in");
    };
    assert_eq!(sqlstate(&login), "28000", "{login}");
    owner
        .batch_execute(&format!("REVOKE ALL ON SCHEMA scratch FROM \"{ROLE}\""))
        .await
        .unwrap();
    assert_eq!(
        upstream.revoke(ROLE).await.unwrap(),
        RevokeReport {
            existed: true,
            terminated: 0
        }
    );
    assert!(!role_exists(&cluster, ROLE).await);
}

/// PostgreSQL only warns (01007) when a GRANT grants nothing because the
/// admin lacks the grant option; create refuses and rolls back.
#[tokio::test]
async fn a_grant_without_grant_option_is_refused_and_nothing_is_created() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    let upstream = least_admin(&cluster).await;
    // The admin may read crm.secrets, but not hand it on.
    cluster
        .superuser_client_in("app")
        .await
        .batch_execute(&format!("GRANT SELECT ON crm.secrets TO \"{ADMIN}\""))
        .await
        .unwrap();
    let mut statements = mint_statements(ROLE);
    statements.push(format!(
        "GRANT SELECT ON TABLE \"crm\".\"secrets\" TO \"{ROLE}\""
    ));
    match upstream.create(&statements).await {
        Err(UpstreamError::Refused { sqlstate, message }) => {
            assert_eq!(sqlstate, "01007", "{message}");
            assert!(message.contains("127.0.0.1"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    assert!(!role_exists(&cluster, ROLE).await);
    // The connection is not poisoned for the next call.
    upstream.create(&mint_statements(ROLE)).await.unwrap();
    assert!(role_exists(&cluster, ROLE).await);
}

#[tokio::test]
async fn create_is_all_or_nothing() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let upstream = PostgresUpstream::new(cluster.settings(ADMIN, ADMIN_PASSWORD, "app")).unwrap();
    let mut statements = mint_statements(ROLE);
    statements.push(format!(
        "GRANT SELECT ON TABLE \"crm\".\"missing\" TO \"{ROLE}\""
    ));
    match upstream.create(&statements).await {
        Err(UpstreamError::Refused { sqlstate, message }) => {
            assert_eq!(sqlstate, "42P01", "{message}");
            assert!(message.contains("127.0.0.1:"), "{message}");
            assert!(message.contains("database app"), "{message}");
            assert!(!message.contains(ADMIN_PASSWORD));
        }
        other => panic!("{other:?}"),
    }
    assert!(!role_exists(&cluster, ROLE).await);
    // A string is one statement: a second one in it is refused.
    let smuggled = vec![format!(
        "COMMENT ON DATABASE app IS 'x'; CREATE ROLE \"{ROLE}\" LOGIN"
    )];
    assert!(matches!(
        upstream.create(&smuggled).await,
        Err(UpstreamError::Refused { .. })
    ));
    assert!(!role_exists(&cluster, ROLE).await);
}

#[tokio::test]
async fn list_roles_finds_only_marked_stint_roles() {
    let cluster = PgCluster::start();
    prepare_app(&cluster).await;
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let upstream = PostgresUpstream::new(cluster.settings(ADMIN, ADMIN_PASSWORD, "app")).unwrap();
    upstream.create(&mint_statements(ROLE)).await.unwrap();
    upstream.create(&mint_statements(ROLE_2)).await.unwrap();
    let superuser = cluster.superuser_client().await;
    superuser
        .batch_execute(&format!(
            "CREATE ROLE stint_cccccccccccccccccccccccc LOGIN;
             CREATE ROLE stint_dddddddddddddddddddddddd LOGIN;
             COMMENT ON ROLE stint_dddddddddddddddddddddddd IS 'something else';
             COMMENT ON ROLE {ADMIN} IS '{MARKER}';
             CREATE ROLE app_user LOGIN;
             COMMENT ON ROLE app_user IS '{MARKER}';
             CREATE ROLE \"stint_x'; --\" LOGIN;
             COMMENT ON ROLE \"stint_x'; --\" IS '{MARKER}';"
        ))
        .await
        .unwrap();
    assert_eq!(
        upstream.list_roles(MARKER).await.unwrap(),
        vec![ROLE.to_owned(), ROLE_2.to_owned()]
    );
    // The marker is a parameter: a quote in it is just a character.
    assert!(
        upstream
            .list_roles("x' OR true --")
            .await
            .unwrap()
            .is_empty()
    );
    upstream.revoke(ROLE).await.unwrap();
    assert_eq!(
        upstream.list_roles(MARKER).await.unwrap(),
        vec![ROLE_2.to_owned()]
    );
}

#[tokio::test]
async fn revoke_refuses_names_stint_does_not_make() {
    let cluster = PgCluster::start();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let upstream =
        PostgresUpstream::new(cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres")).unwrap();
    for name in ["postgres", ADMIN, "stint_aaaa\"; DROP ROLE postgres; --"] {
        match upstream.revoke(name).await {
            Err(UpstreamError::Refused { sqlstate, .. }) => assert_eq!(sqlstate, "42602"),
            other => panic!("{name}: {other:?}"),
        }
    }
    assert!(role_exists(&cluster, "postgres").await);
    assert!(role_exists(&cluster, ADMIN).await);
}

#[tokio::test]
async fn tls_verify_full_works_and_a_wrong_ca_fails() {
    let cluster = PgCluster::start_with_tls();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let ca = cluster.ca_pem().unwrap().as_bytes().to_vec();
    for host in ["127.0.0.1", "localhost"] {
        let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
        settings.host = host.to_owned();
        settings.tls = TlsMode::VerifyFull;
        settings.ca_pem = Some(ca.clone());
        let upstream = PostgresUpstream::new(settings).unwrap();
        upstream.ping().await.unwrap();
        // The session really is TLS.
        let (admin, _task) = cluster
            .connect_as(ADMIN, ADMIN_PASSWORD, "postgres")
            .await
            .unwrap();
        let tls_sessions = admin
            .query_one(
                "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) WHERE s.ssl AND a.application_name = 'stint'",
                &[],
            )
            .await
            .unwrap();
        assert!(tls_sessions.get::<_, i64>(0) >= 1);
    }

    let other_ca = PgCluster::start_with_tls();
    for tls in [TlsMode::VerifyFull, TlsMode::Require] {
        let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
        settings.tls = tls;
        settings.ca_pem = Some(other_ca.ca_pem().unwrap().as_bytes().to_vec());
        let upstream = PostgresUpstream::new(settings).unwrap();
        match upstream.ping().await {
            Err(UpstreamError::Unavailable(message)) => {
                assert!(
                    message.contains("tls") || message.contains("TLS"),
                    "{message}"
                );
                assert!(message.contains(&cluster.port().to_string()), "{message}");
            }
            other => panic!("{tls:?} with a wrong CA: {other:?}"),
        }
        // Mozilla's roots do not vouch for a test CA either.
        let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
        settings.tls = tls;
        let upstream = PostgresUpstream::new(settings).unwrap();
        assert!(matches!(
            upstream.ping().await,
            Err(UpstreamError::Unavailable(_))
        ));
    }
}

/// Over TLS the admin's SCRAM is bound to the TLS session (channel binding
/// required): a server that asks for the password in clear, or as MD5 (as
/// someone in the middle with an acceptable certificate would, to learn
/// it), is refused before the password is sent.
#[tokio::test]
async fn over_tls_the_password_is_never_sent_in_clear_or_md5() {
    let cluster = PgCluster::start_with_tls();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let upstream = || {
        let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
        settings.tls = TlsMode::VerifyFull;
        settings.ca_pem = Some(cluster.ca_pem().unwrap().as_bytes().to_vec());
        PostgresUpstream::new(settings).unwrap()
    };
    upstream().ping().await.unwrap();
    // md5 with a SCRAM-stored password is SCRAM: store an MD5 hash for it.
    cluster
        .superuser_client()
        .await
        .batch_execute(&format!(
            "SET password_encryption = 'md5'; ALTER ROLE {ADMIN} PASSWORD '{ADMIN_PASSWORD}'"
        ))
        .await
        .unwrap();
    for method in ["password", "md5"] {
        cluster.use_host_auth(method).await;
        let refused = upstream().ping().await;
        assert!(
            matches!(&refused, Err(UpstreamError::Unavailable(message)) if message.contains("channel binding")),
            "{method}: {refused:?}"
        );
    }
    cluster
        .superuser_client()
        .await
        .batch_execute(&format!("ALTER ROLE {ADMIN} PASSWORD '{ADMIN_PASSWORD}'"))
        .await
        .unwrap();
    cluster.use_host_auth("scram-sha-256").await;
    upstream().ping().await.unwrap();
}

/// Require checks the chain but not the name (libpq's verify-ca);
/// VerifyFull checks both.
#[tokio::test]
async fn tls_require_checks_the_chain_but_not_the_name() {
    let cluster = PgCluster::start_with_tls_for(&["db.example"]);
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let ca = cluster.ca_pem().unwrap().as_bytes().to_vec();
    let with = |tls| {
        let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
        settings.tls = tls;
        settings.ca_pem = Some(ca.clone());
        PostgresUpstream::new(settings).unwrap()
    };
    with(TlsMode::Require).ping().await.unwrap();
    match with(TlsMode::VerifyFull).ping().await {
        Err(UpstreamError::Unavailable(message)) => {
            assert!(message.contains("not valid for"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_stopped_server_is_unavailable_within_the_timeouts_and_comes_back() {
    let mut cluster = PgCluster::start();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
    settings.connect_timeout = Duration::from_millis(800);
    let upstream = PostgresUpstream::new(settings).unwrap();
    upstream.ping().await.unwrap();
    cluster.stop();
    for _ in 0..3 {
        let started = Instant::now();
        let result = upstream.ping().await;
        let took = started.elapsed();
        match result {
            Err(UpstreamError::Unavailable(message)) => {
                assert!(message.contains(&cluster.port().to_string()), "{message}");
                assert!(!message.contains(ADMIN_PASSWORD), "{message}");
            }
            other => panic!("{other:?}"),
        }
        assert!(took < Duration::from_millis(1600), "took {took:?}");
    }
    assert!(matches!(
        upstream.revoke(ROLE).await,
        Err(UpstreamError::Unavailable(_))
    ));
    cluster.start_again();
    upstream.ping().await.unwrap();
}

/// A server that accepts TCP but never answers: connecting gives up at
/// connect_timeout.
#[tokio::test]
async fn a_silent_server_is_unavailable_after_connect_timeout() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    for tls in [TlsMode::Disable, TlsMode::VerifyFull] {
        let upstream = PostgresUpstream::new(stint_targets::PostgresSettings {
            host: "127.0.0.1".to_owned(),
            port,
            database: "app".to_owned(),
            user: ADMIN.to_owned(),
            password: stint_targets::Password::new(ADMIN_PASSWORD.to_owned()),
            tls,
            ca_pem: None,
            pool_size: 1,
            connect_timeout: Duration::from_millis(500),
            statement_timeout: Duration::from_secs(5),
        })
        .unwrap();
        let started = Instant::now();
        match upstream.ping().await {
            Err(UpstreamError::Unavailable(message)) => {
                assert!(message.contains("timed out"), "{message}")
            }
            other => panic!("{other:?}"),
        }
        let took = started.elapsed();
        assert!(
            took >= Duration::from_millis(450) && took < Duration::from_millis(1000),
            "took {took:?}"
        );
    }
    held.abort();
}

#[tokio::test]
async fn a_slow_statement_is_cut_at_statement_timeout() {
    let cluster = PgCluster::start();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
    settings.statement_timeout = Duration::from_millis(300);
    let upstream = PostgresUpstream::new(settings).unwrap();
    let started = Instant::now();
    match upstream.create(&["SELECT pg_sleep(5)".to_owned()]).await {
        Err(UpstreamError::Unavailable(message)) => {
            assert!(
                message.contains("timed out") || message.contains("57014"),
                "{message}"
            )
        }
        other => panic!("{other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    upstream.ping().await.unwrap();
}

#[tokio::test]
async fn the_pool_is_bounded_and_reused() {
    let cluster = PgCluster::start();
    cluster.create_admin(ADMIN, ADMIN_PASSWORD, true).await;
    let mut settings = cluster.settings(ADMIN, ADMIN_PASSWORD, "postgres");
    settings.pool_size = 2;
    settings.connect_timeout = Duration::from_millis(500);
    settings.statement_timeout = Duration::from_secs(10);
    let upstream = PostgresUpstream::new(settings).unwrap();
    let slow = || {
        let upstream = upstream.clone();
        tokio::spawn(async move { upstream.create(&["SELECT pg_sleep(2)".to_owned()]).await })
    };
    // The second waits for the first's catalog lock: both hold a
    // connection, one sleeping, one waiting.
    let (first, second) = (slow(), slow());
    let superuser = cluster.superuser_client().await;
    stint_tests::eventually(Duration::from_secs(10), "both slots busy", || async {
        let row = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stint' AND state = 'active'",
                &[],
            )
            .await
            .unwrap();
        (row.get::<_, i64>(0) == 2).then_some(())
    })
    .await;
    let started = Instant::now();
    match upstream.ping().await {
        Err(UpstreamError::Unavailable(message)) => {
            assert!(
                message.contains("all 2 admin connections to 127.0.0.1:")
                    && message.contains("are busy"),
                "{message}"
            );
        }
        other => panic!("{other:?}"),
    }
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_millis(1000),
        "took {took:?}"
    );
    first.await.unwrap().unwrap();
    second.await.unwrap().unwrap();
    for _ in 0..10 {
        upstream.ping().await.unwrap();
    }
    let open = superuser
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'stint'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(open.get::<_, i64>(0), 2, "idle connections are reused");
}
