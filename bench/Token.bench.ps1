<#
.SYNOPSIS
    Token benchmarks: engine signing rate against AWSSDK.Core's presigner (same process, same run),
    and New-RdsIamToken through the PowerShell pipeline.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [double] $Seconds = 2
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'

Write-Host '-- engine, in-process (C#)'
& dotnet run --project (Join-Path $PSScriptRoot 'BastionTools.Bench') -c Release -- token $Seconds | Out-Host
if ($LASTEXITCODE) { throw "the C# benchmark failed ($LASTEXITCODE)" }

Write-Host '-- New-RdsIamToken, one pipeline of objects'
Import-Module $ModulePath -Force
$keys = @{ AccessKey = 'AKIAIOSFODNN7EXAMPLE'; SecretKey = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }
$n = 20000
$items = 1..$n | ForEach-Object { [pscustomobject]@{ Hostname = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'; UserName = "user$($_ % 64)" } }
$null = $items[0..999] | New-RdsIamToken @keys                  # warm-up
$baseline = Measure-Command { $null = $items | Select-Object Hostname, UserName }   # the pipeline's own cost
$t = Measure-Command { $null = $items | New-RdsIamToken @keys }
'{0,-48} {1,12:N0} tokens/s  ({2:N0} in {3:F2} s)' -f 'New-RdsIamToken (pipeline)', ($n / $t.TotalSeconds), $n, $t.TotalSeconds | Out-Host
'{0,-48} {1,12:N0} objects/s (baseline: the same pipeline through Select-Object)' -f 'Select-Object Hostname, UserName', ($n / $baseline.TotalSeconds) | Out-Host
