<#
.SYNOPSIS
    Runs a SQL migration against a private RDS PostgreSQL database through the bastion, logging in with IAM — the
    script the GitHub Actions and Azure DevOps examples beside it call.

.DESCRIPTION
    Credentials and region come from the environment the CI system sets up (GitHub: aws-actions/configure-aws-credentials
    with an OIDC role; Azure DevOps: the AWS Toolkit's service connection), in the AWS.Tools order. The migration runs
    in one transaction: all of it or nothing. Never prompts. Exit code 0 on success, 1 on any failure, with the error
    (and its SQLSTATE) on stderr.

.EXAMPLE
    pwsh -File docs/examples/Invoke-DbMigration.ps1 -Bastion bastion -DbHost mydb.abc.eu-west-1.rds.amazonaws.com -Database app -UserName app_migrator -MigrationFile migrations/0042.sql
#>
[CmdletBinding()]
param(
    # The bastion's Name tag (or use -Target with an instance id).
    [string] $Bastion = $env:BASTION_NAME,
    [string] $Target = $env:BASTION_INSTANCE_ID,
    [Parameter(Mandatory)] [string] $DbHost,
    [int] $DbPort = 5432,
    [Parameter(Mandatory)] [string] $Database,
    [Parameter(Mandatory)] [string] $UserName,
    [Parameter(Mandatory)] [string] $MigrationFile,
    # Only for VPC endpoints or a local test double; real runs leave it empty.
    [string] $EndpointUrl = $env:BASTIONTOOLS_ENDPOINT_URL,
    # Only when the database's CA is not in the RDS bundle the module ships.
    [string] $SslRootCertificate = $env:BASTIONTOOLS_SSL_ROOT_CERT,
    [string] $ModulePath = 'BastionTools'
)
$ErrorActionPreference = 'Stop'
$ConfirmPreference = 'None'
$ProgressPreference = 'SilentlyContinue'

try {
    Import-Module $ModulePath
    $connect = @{ DbHost = $DbHost; DbPort = $DbPort; Database = $Database; UserName = $UserName }
    if ($Target) { $connect.Target = $Target } elseif ($Bastion) { $connect.Name = $Bastion } else { throw 'Set -Bastion (Name tag) or -Target (instance id).' }
    if ($EndpointUrl) { $connect.EndpointUrl = $EndpointUrl }
    if ($SslRootCertificate) { $connect.SslRootCertificate = $SslRootCertificate }

    $ci = if ($env:GITHUB_ACTIONS -eq 'true') { 'GitHub Actions' } elseif ($env:TF_BUILD -eq 'True') { 'Azure DevOps' } else { 'a shell' }
    Write-Host "Migrating $Database on $DbHost as $UserName from $ci ($MigrationFile)"
    $db = Connect-IamPostgres @connect
    try {
        Invoke-IamPostgresQuery -Connection $db -InputFile $MigrationFile -Transaction -NonQuery | Out-Null
        Write-Host 'Migration applied.'
    }
    finally {
        $db | Disconnect-IamPostgres
    }
    exit 0
}
catch {
    $sqlState = if ($_.Exception.PSObject.Properties['SqlState']) { " (SQLSTATE $($_.Exception.SqlState))" } else { '' }
    [Console]::Error.WriteLine("Migration failed: $($_.FullyQualifiedErrorId): $($_.Exception.Message)$sqlState")
    exit 1
}
