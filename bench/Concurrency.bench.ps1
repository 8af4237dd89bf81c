<#
.SYNOPSIS
    Concurrency benchmark (issue 11): the real pgbench running 'select 1;' with 1, 8, 32 and 64 clients against
    PostgreSQL directly on loopback and through one BastionTools tunnel (the sandbox agent in fast mode, in a process
    of its own), direct/tunnel pairs per client count in the same run (3 rounds, order swapped every other round): tps and
    p50/p99 side by side, the median ratio; psql \copy of 300,000 rows (~12 MB) out and in, median of 3, tunnel/direct ratio; the tunnel's cost from the bench process's
    own counters (CPU per MB and per data-channel message, allocated bytes per message, memory per open connection)
    and the sandbox agent's CPU per transaction; the machine's cores and load average at start and end.
    With -Plugin (or $env:BASTIONTOOLS_SSM_PLUGIN), the official session-manager-plugin as a third leg of every run.
    With -Rate N, every run is offered the same N transactions a second (pgbench -R) instead of a closed loop.
    Figures, never assertions. Needs pgbench and psql (the postgresql package; $env:BASTIONTOOLS_PG_BIN to choose).
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX,
    # Client counts: 1, 8, 32, 64 or a comma-separated string (as -File passes it).
    [string[]] $Clients = @('1', '8', '32', '64'),
    [int] $Seconds = 10,
    # Direct/tunnel pairs per client count; the goal lines use the median over them.
    [int] $Rounds = 3,
    [ValidateSet('simple', 'extended', 'prepared')] [string] $Protocol = 'simple',
    # The official session-manager-plugin binary, measured beside the module in the same run (bench/README.md says how to build it).
    [string] $Plugin = $env:BASTIONTOOLS_SSM_PLUGIN,
    # Transactions a second offered in all (pgbench -R), the same load whatever the client count; 0: closed loop.
    [ValidateRange(0, [int]::MaxValue)] [int] $Rate = 0
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'
if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Bench." }
$pluginArgs = @()
if ($Plugin) {
    if (-not (Test-Path $Plugin)) { throw "The session-manager-plugin binary '$Plugin' does not exist." }
    $pluginArgs = @('--plugin', $Plugin)
}
if ($Rate -gt 0) { $pluginArgs += @('--rate', $Rate) }
& dotnet run --project (Join-Path $PSScriptRoot 'BastionTools.Bench') -c Release -- concurrency --sandbox $SandboxPath --clients ($Clients -join ',') --seconds $Seconds --rounds $Rounds --protocol $Protocol @pluginArgs | Out-Host
if ($LASTEXITCODE) { throw "the concurrency benchmark failed ($LASTEXITCODE)" }
