<#
.SYNOPSIS
    Import time of the built module, measured in fresh pwsh processes, against the import of an empty
    script module in the same processes (the baseline), median of several runs.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [int] $Runs = 7
)
$ErrorActionPreference = 'Stop'
$empty = Join-Path ([IO.Path]::GetTempPath()) ("bt-empty-" + [guid]::NewGuid().ToString('n'))
New-Item -ItemType Directory -Path $empty | Out-Null
Set-Content (Join-Path $empty 'Empty.psm1') -Value 'function Get-Nothing {}'
$pwsh = [Environment]::ProcessPath
$prefix = @(); if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { $prefix = @(Join-Path $PSHOME 'pwsh.dll') }
$script = @"
`$b = [Diagnostics.Stopwatch]::StartNew(); Import-Module '$empty/Empty.psm1'; `$b.Stop()
`$s = [Diagnostics.Stopwatch]::StartNew(); Import-Module '$ModulePath'; `$s.Stop()
`$f = [Diagnostics.Stopwatch]::StartNew(); `$null = New-RdsIamToken a.b.us-east-1.rds.amazonaws.com -UserName u -AccessKey AKIDEXAMPLE -SecretKey secretvalue; `$f.Stop()
'{0:F1} {1:F1} {2:F1}' -f `$b.Elapsed.TotalMilliseconds, `$s.Elapsed.TotalMilliseconds, `$f.Elapsed.TotalMilliseconds
"@
$rows = 1..$Runs | ForEach-Object {
    $line = & $pwsh @prefix -NoProfile -NonInteractive -Command $script
    $b, $s, $f = ($line | Select-Object -Last 1) -split ' ' | ForEach-Object { [double]$_ }
    [pscustomobject]@{ Baseline = $b; Import = $s; FirstCall = $f }
}
Remove-Item $empty -Recurse -Force
function Median($values) { $v = @($values | Sort-Object); $v[[int][math]::Floor($v.Count / 2)] }
$mb = Median $rows.Baseline; $mi = Median $rows.Import; $mf = Median $rows.FirstCall
'Import-Module BastionTools         median {0,7:F1} ms over {1} fresh processes' -f $mi, $Runs
'Import-Module of an empty module   median {0,7:F1} ms (baseline)   ratio {1:F1}x' -f $mb, ($mi / [math]::Max($mb, 0.001))
'first New-RdsIamToken after import median {0,7:F1} ms' -f $mf
