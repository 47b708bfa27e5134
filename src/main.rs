use clap::{Parser, Subcommand};

use tandem::{telemetry, Application, Config};

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
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    if let Err(e) = telemetry::init(&cli.config.log, cli.config.log_format) {
        eprintln!("tandem: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let result = match cli.command.unwrap_or(Command::Serve) {
        Command::Serve => serve(cli.config),
        Command::Migrate => migrate(cli.config),
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
    let store = tandem::store::Store::open(&config.database_url, 1).map_err(|e| e.to_string())?;
    let applied = store.migrate().map_err(|e| e.to_string())?;
    tracing::info!(backend = store.backend(), applied, "migrations applied");
    Ok(())
}
