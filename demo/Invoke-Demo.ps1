<#
.SYNOPSIS
    The BastionTools demo, run by 'build.ps1 -Task Demo': the user story as a user would type it.
    Today: import the built module and sign an IAM token for a sample RDS endpoint with demo credentials
    (signing is local: no AWS account is needed). The tunnel and query steps join as they land.
#>
[CmdletBinding()]
param(
    [Parameter(Mandatory)] [string] $ModulePath
)
$ErrorActionPreference = 'Stop'
$env:AWS_EC2_METADATA_DISABLED = 'true'

function Step([string] $Text, [scriptblock] $Block) {
    Write-Host ''
    Write-Host "PS> $Text" -ForegroundColor Yellow
    & $Block
}

Step "Import-Module BastionTools" {
    $elapsed = Measure-Command { Import-Module $ModulePath -Force }
    Get-Module BastionTools | Format-Table Name, Version, @{ n = 'Cmdlets'; e = { $_.ExportedCmdlets.Keys -join ', ' } } -AutoSize | Out-Host
    Write-Host ("imported in {0:N0} ms" -f $elapsed.TotalMilliseconds)
}

# Demo credentials: the documentation's example keys. A real run uses a profile, SSO, OIDC or instance credentials.
$demoKeys = @{ AccessKey = 'AKIAIOSFODNN7EXAMPLE'; SecretKey = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' }
$endpoint = 'demo.c0ffee123456.us-west-2.rds.amazonaws.com'

Step "`$token = New-RdsIamToken -Hostname $endpoint -UserName app_reader -AccessKey AKIA... -SecretKey ... -Debug" {
    $script:token = New-RdsIamToken -Hostname $endpoint -UserName app_reader @demoKeys -Debug 5>&1 | ForEach-Object {
        if ($_ -is [System.Management.Automation.DebugRecord]) { Write-Host "DEBUG: $($_.Message)" -ForegroundColor DarkGray } else { $_ }
    }
}

Step '$token  # what psql/Npgsql take as the password (valid 15 minutes)' {
    $hostPort, $query = $script:token -split '/\?', 2
    Write-Host "  endpoint : $hostPort"
    foreach ($pair in $query -split '&') {
        $k, $v = $pair -split '=', 2
        if ($k -eq 'X-Amz-Signature') { $v = $v.Substring(0, 8) + '…' }
        Write-Host ("  {0,-20} {1}" -f $k, [uri]::UnescapeDataString($v))
    }
    Write-Host "  length   : $($script:token.Length) characters"
}

Step "@([pscustomobject]@{ Hostname = '$endpoint'; UserName = 'app_writer' }, ...) | New-RdsIamToken ..." {
    @(
        [pscustomobject]@{ Hostname = $endpoint; UserName = 'app_writer' }
        [pscustomobject]@{ Hostname = 'reports.c0ffee123456.eu-west-1.rds.amazonaws.com'; Port = 6432; UserName = 'analyst' }
    ) | New-RdsIamToken @demoKeys | ForEach-Object { ($_ -split '&X-Amz-Signature=')[0] + '&X-Amz-Signature=…' } | Out-Host
}

Write-Host ''
Write-Host 'Demo finished.' -ForegroundColor Green
