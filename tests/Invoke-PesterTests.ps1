<#
.SYNOPSIS
    Runs the Pester suite against a built module (called by build.ps1 -Task Test in a fresh pwsh process).
    Writes NUnit and JUnit XML and a small JSON summary that build.ps1 adds to the xUnit counts.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [Parameter(Mandatory)] [string] $PesterPath,
    [Parameter(Mandatory)] [string] $ResultsDir,
    [string] $Filter
)
$ErrorActionPreference = 'Stop'
Import-Module $PesterPath -Force

# Every test file reads these.
$env:BASTIONTOOLS_TEST_MODULE = (Resolve-Path $ModulePath).Path
$env:BASTIONTOOLS_TEST_TOOLS = (Resolve-Path (Join-Path $PSScriptRoot '../tools/packages')).Path
$env:AWS_EC2_METADATA_DISABLED = 'true'

$paths = Get-ChildItem $PSScriptRoot -Filter '*.Tests.ps1' -File | Where-Object { -not $Filter -or $_.FullName -match $Filter } | ForEach-Object FullName

$config = New-PesterConfiguration
$config.Run.Path = $paths
$config.Run.PassThru = $true
$config.Run.Exit = $false
$config.Output.Verbosity = 'Normal'
$config.TestResult.Enabled = $true
$config.TestResult.OutputFormat = 'NUnitXml'
$config.TestResult.OutputPath = Join-Path $ResultsDir 'pester.nunit.xml'
$config.Should.ErrorAction = 'Stop'

$result = Invoke-Pester -Configuration $config
$result | Export-JUnitReport -Path (Join-Path $ResultsDir 'pester.junit.xml')

# A broken BeforeAll or a file that does not parse fails its container: count each as a failure.
$failed = $result.FailedCount + $result.FailedBlocksCount + $result.FailedContainersCount
[pscustomobject]@{
    Passed  = $result.PassedCount
    Failed  = $failed
    Skipped = $result.SkippedCount + $result.NotRunCount
} | ConvertTo-Json | Set-Content -Path (Join-Path $ResultsDir 'pester.summary.json')
exit ([int]($failed -gt 0))
