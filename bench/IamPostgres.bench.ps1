<#
.SYNOPSIS
    IAM PostgreSQL benchmarks: the engine (IAM data source through the tunnel and the RDS-IAM double against a direct
    connection, same run), then the cmdlets a user types: cold Connect-IamPostgres to the first row in a fresh
    PowerShell, and rows per second of a 1M-row Invoke-IamPostgresQuery through the pipeline.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath,
    [string] $SandboxPath = $env:BASTIONTOOLS_SANDBOX
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'
if (-not $SandboxPath -or -not (Test-Path $SandboxPath)) { throw "The sandbox is not built ('$SandboxPath'): run ./build.ps1 -Task Bench." }

Write-Host '-- engine (C#)'
& dotnet run --project (Join-Path $PSScriptRoot 'BastionTools.Bench') -c Release -- iam --sandbox $SandboxPath | Out-Host
if ($LASTEXITCODE) { throw "the IAM benchmark failed ($LASTEXITCODE)" }

Write-Host '-- cmdlets'
$psi = [System.Diagnostics.ProcessStartInfo]::new('dotnet')
# The agent without its 1 ms pause per 1 KiB read (--output-read-pause-ms 0): the module is measured, not the agent's cap.
foreach ($a in $SandboxPath, '--rds', '--output-read-pause-ms', '0') { $psi.ArgumentList.Add($a) }
$psi.RedirectStandardInput = $true; $psi.RedirectStandardOutput = $true; $psi.UseShellExecute = $false
$sandboxProcess = [System.Diagnostics.Process]::Start($psi)
try {
    $sb = $sandboxProcess.StandardOutput.ReadLine() | ConvertFrom-Json
    $env:PGPASSWORD = $sb.postgres.password
    & psql -X -q -h 127.0.0.1 -p $sb.postgres.port -U $sb.postgres.user -d $sb.postgres.database -c "CREATE ROLE bench_cmd LOGIN; GRANT rds_iam TO bench_cmd" | Out-Null
    Remove-Item env:PGPASSWORD
    $common = "-DbHost '$($sb.rds.endpoint)' -Database '$($sb.postgres.database)' -SslRootCertificate '$($sb.rds.caBundle)' -UserName bench_cmd -AccessKey '$($sb.accessKeyId)' -SecretKey '$($sb.secretAccessKey)' -Region '$($sb.region)' -EndpointUrl '$($sb.ssm)'"
    $pwsh = [Environment]::ProcessPath
    $prefix = @(); if ([IO.Path]::GetFileNameWithoutExtension($pwsh) -eq 'dotnet') { $prefix = @(Join-Path $PSHOME 'pwsh.dll') }
    $cold = 1..3 | ForEach-Object {
        $script = "Import-Module '$ModulePath'; `$sw = [Diagnostics.Stopwatch]::StartNew(); `$c = Connect-IamPostgres -Name bastion $common; `$null = Invoke-IamPostgresQuery -Connection `$c -Query 'select 1'; `$sw.Stop(); `$c | Disconnect-IamPostgres; `$sw.Elapsed.TotalMilliseconds"
        [double](& $pwsh @prefix -NoProfile -NonInteractive -Command $script | Select-Object -Last 1)
    } | Sort-Object
    'cold Connect-IamPostgres -> first row (fresh pwsh)   median {0,7:F0} ms   (runs: {1})' -f $cold[1], (($cold | ForEach-Object { '{0:F0}' -f $_ }) -join ', ')

    Import-Module $ModulePath -Force
    $c = Invoke-Expression "Connect-IamPostgres -Name bastion $common"
    $null = Invoke-IamPostgresQuery -Connection $c -Query 'select 1'
    $t = Measure-Command { $n = (Invoke-IamPostgresQuery -Connection $c -Query "select g, 'row ' || g as label from generate_series(1, 1000000) g" | Measure-Object).Count }
    'Invoke-IamPostgresQuery, 1M rows through the pipeline   {0,10:N0} rows/s ({1:N0} rows in {2:F1} s)' -f ($n / $t.TotalSeconds), $n, $t.TotalSeconds
    $t2 = Measure-Command { 1..1000 | ForEach-Object { $null = Invoke-IamPostgresQuery -Connection $c -Query 'select 1' } }
    'Invoke-IamPostgresQuery, 1000 small queries            {0,7:F0} ms ({1:F2} ms each)' -f $t2.TotalMilliseconds, ($t2.TotalMilliseconds / 1000)
    $c | Disconnect-IamPostgres
}
finally {
    $sandboxProcess.StandardInput.Close()
    if (-not $sandboxProcess.WaitForExit(20000)) { $sandboxProcess.Kill($true) }
}
