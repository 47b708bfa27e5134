use clap::{Parser, Subcommand};

use tandem::{telemetry, Application, Config};

/// mimalloc (see Cargo.toml): measured in A/B pairs, 8% less server CPU per read than glibc's malloc.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// tandem: FHIR R4 records for individual and group therapy.
#[derive(Parser)]
#[command(version, about)]
struct Cli {
    #[command(flatten)]
    config: Config,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the FHIR server (the default).
    Serve,
    /// Apply the pending database migrations and exit.
    Migrate,
    /// Print the OpenAPI 3.1 document of the API (as served at /openapi.json).
    Openapi,
    /// Print a short-lived bearer token signed with the local development key (the key a server
    /// with no configured key creates under TANDEM_DATA_DIR when it listens on loopback).
    Token {
        /// SMART scopes, space-separated, such as "system/*.cruds" or "patient/*.rs".
        #[arg(long)]
        scope: String,
        /// The patient in context, for patient/ scopes.
        #[arg(long)]
        patient: Option<String>,
        /// The subject (sub) of the token.
        #[arg(long, default_value = "local-developer")]
        sub: String,
        /// The user's FHIR resource (fhirUser claim), such as Practitioner/rivera.
        #[arg(long)]
        fhir_user: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        lifetime: u64,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Serve);
    // `token` prints only the token on stdout, so that TOKEN=$(tandem token …) works.
    let log = if matches!(command, Command::Token { .. } | Command::Openapi) {
        "off"
    } else {
        cli.config.log.as_str()
    };
    if let Err(e) = telemetry::init(log, cli.config.log_format) {
        eprintln!("tandem: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match command {
        Command::Serve => serve(cli.config),
        Command::Migrate => migrate(cli.config),
        Command::Openapi => {
            print!("{}", tandem::api::docs::document_pretty());
            Ok(())
        }
        Command::Token {
            scope,
            patient,
            sub,
            fhir_user,
            lifetime,
        } => {
            tandem::auth::token::mint(&cli.config, &scope, patient, &sub, fhir_user, lifetime).map(|t| println!("{t}"))
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("tandem: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> Result<(), String> {
    let listen = config.listen.clone();
    actix_web::rt::System::new().block_on(async move {
        let app = Application::build(config).map_err(|e| e.to_string())?;
        tracing::info!(listen = %listen, port = app.port(), "tandem is serving FHIR R4");
        app.run_until_stopped().await.map_err(|e| e.to_string())
    })
}

fn migrate(config: Config) -> Result<(), String> {
    config.validate()?;
    let store = tandem::store::Store::open(&config.database_url, 1)
        .map_err(|e| e.to_string())?
        .with_rules(tandem::startup::rules(&config));
    let applied = store.migrate().map_err(|e| e.to_string())?;
    tracing::info!(backend = store.backend(), applied, "migrations applied");
    let audit = tandem::startup::open_audit_store(&config, &store).map_err(|e| e.to_string())?;
    tandem::startup::migrate_audit_store(&config, &audit).map_err(|e| e.to_string())?;
    // The migration step (the chart's Job) also publishes the measures' Questionnaires.
    tandem::startup::publish(&store).map_err(|e| e.to_string())
}
