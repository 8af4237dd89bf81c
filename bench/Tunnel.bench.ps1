<#
.SYNOPSIS
    Tunnel benchmark: PostgreSQL through BastionTools' own Session Manager data channel (the sandbox agent, on
    loopback) against a direct loopback connection to the same server, in the same run: COPY of about 13 MB out of
    and into PostgreSQL, SELECT 1 round trips (p50/p99), time from the start of a session to the first row, and the
    client's memory with 64 open connections through one tunnel.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX,
    [int] $RoundTrips = 2000
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'
if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Bench." }
& dotnet run --project (Join-Path $PSScriptRoot 'BastionTools.Bench') -c Release -- tunnel --sandbox $SandboxPath --round-trips $RoundTrips | Out-Host
if ($LASTEXITCODE) { throw "the tunnel benchmark failed ($LASTEXITCODE)" }
