<#
.SYNOPSIS
    Resilience benchmark: recovery time after a 30 s network blackout (a silent outage: no FIN, no RST), the throughput
    of one connection while another connection's client has stopped reading (against the same COPY alone), and the
    client's peak memory and elapsed time for 100 MB each way under 5 % drop/duplicate/reorder plus a forced WebSocket
    kill (against the same transfer without faults). Figures, never assertions: run on a quiet machine for stable ones.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX,
    [int] $Megabytes = 100,
    [int] $BlackoutSeconds = 30
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'
if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Bench." }
& dotnet run --project (Join-Path $PSScriptRoot 'BastionTools.Bench') -c Release -- resilience --sandbox $SandboxPath --megabytes $Megabytes --blackout $BlackoutSeconds | Out-Host
if ($LASTEXITCODE) { throw "the resilience benchmark failed ($LASTEXITCODE)" }
